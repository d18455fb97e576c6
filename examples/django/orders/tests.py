"""The saga's tests, run by Django's own test runner (`python manage.py test`): plain TestCases. The workflow
harness runs each orchestration in the test's thread and transaction, so activities see the rows the test wrote,
and skips the approval timer forward on a virtual clock."""

from django.conf import settings
from django.test import TestCase

from duroxide_celery.contrib.django import get_harness

from .models import Order, Product


class PlaceOrderTests(TestCase):
    def setUp(self):
        Product.objects.create(sku="lamp", stock=5)
        self.harness = get_harness()

    def place(self, card="4242-4242", quantity=2):
        order = Order.objects.create(sku="lamp", quantity=quantity, card=card)
        self.harness.start_orchestration(order.instance_id, "PlaceOrder", order.pk)
        return order

    def stock(self):
        return Product.objects.get(sku="lamp").stock

    def test_an_approved_order_is_paid(self):
        order = self.place()
        self.assertEqual(self.harness.get_status(order.instance_id).custom_status, "awaiting approval")
        self.assertEqual(self.stock(), 3)
        self.harness.raise_event(order.instance_id, "Approval", {"approved": True})
        result = self.harness.get_status(order.instance_id)
        self.assertEqual(result.status, "Completed", result.error)
        self.assertEqual(result.output["status"], "paid")
        order.refresh_from_db()
        self.assertEqual(order.status, "paid")

    def test_a_declined_card_gives_the_stock_back(self):
        order = self.place(card="4000-0000")
        self.harness.raise_event(order.instance_id, "Approval", {"approved": True})
        result = self.harness.get_status(order.instance_id)
        self.assertEqual(result.output["status"], "payment failed")
        self.assertIn("card declined", result.output["reason"])
        self.assertEqual(self.stock(), 5)

    def test_an_order_nobody_approves_is_cancelled_when_its_timer_fires(self):
        order = self.place()
        self.harness.advance(settings.APPROVAL_TIMEOUT_MS)  # a day passes on the virtual clock, at once
        result = self.harness.get_status(order.instance_id)
        self.assertEqual(result.output, {"order": order.pk, "status": "cancelled", "reason": "not approved in time"})
        self.assertEqual(self.stock(), 5)
        self.assertIn("TimerFired", self.harness.kinds(order.instance_id))

    def test_an_order_beyond_the_stock_fails(self):
        order = self.place(quantity=9)
        result = self.harness.get_status(order.instance_id)
        self.assertEqual(result.status, "Failed")
        self.assertIn("not enough lamp in stock", result.error)
