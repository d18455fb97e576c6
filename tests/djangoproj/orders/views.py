import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from duroxide_celery.contrib.django import get_client

from .models import Order


@csrf_exempt
def create_order(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body or b"{}")
    with transaction.atomic():
        order = Order.objects.create(item=body["item"], quantity=int(body["quantity"]))
        # Inside atomic(): the start waits for the commit, so ReserveStock finds the row.
        get_client().start_orchestration(f"order-{order.pk}", "PlaceOrder", order.pk)
    return JsonResponse({"order": order.pk, "instance": f"order-{order.pk}"}, status=201)


def order_status(request: HttpRequest, pk: int) -> JsonResponse:
    status = get_client().get_status(f"order-{pk}")
    return JsonResponse({"status": status.status, "output": status.output, "error": status.error})
