import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from duroxide_celery.contrib.django import get_client

from .models import Order


@csrf_exempt  # an API for the example; a real form keeps CSRF protection
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body or b"{}")
    with transaction.atomic():
        order = Order.objects.create(sku=body["sku"], quantity=int(body["quantity"]), card=body["card"])
        # Inside atomic(): the workflow starts when this transaction commits, and not at all if it rolls back.
        get_client().start_orchestration(order.instance_id, "PlaceOrder", order.pk)
    return JsonResponse({"order": order.pk, "instance": order.instance_id}, status=201)


@csrf_exempt
@require_POST
def approve_order(request: HttpRequest, pk: int) -> JsonResponse:
    order = get_object_or_404(Order, pk=pk)
    approved = json.loads(request.body or b"{}").get("approved", True)
    get_client().raise_event(order.instance_id, "Approval", {"approved": bool(approved)})
    return JsonResponse({"order": order.pk, "approved": bool(approved)}, status=202)


@require_GET
def order_detail(request: HttpRequest, pk: int) -> JsonResponse:
    order = get_object_or_404(Order, pk=pk)
    status = get_client().get_status(order.instance_id)
    return JsonResponse(
        {
            "order": order.pk,
            "status": order.status,
            "workflow": status.status,
            "step": status.custom_status,
            "output": status.output,
            "error": status.error,
        }
    )
