"""pytest-django with duroxide_celery's `workflow_harness` fixture (pytest.ini loads the plugin)."""

import pytest

from .models import Order


@pytest.mark.django_db
def test_the_harness_runs_the_projects_workflow_in_the_tests_transaction(workflow_harness):
    order = Order.objects.create(item="mug", quantity=1)
    result = workflow_harness.run("PlaceOrder", order.pk)
    assert result.status == "Completed", result.error
    assert result.output == {"order": order.pk, "item": "mug", "quantity": 1}
    order.refresh_from_db()
    assert order.status == "reserved"
