"""Run by Django's own test runner (`manage.py test orders`), with CELERY_TASK_ALWAYS_EAGER: the engine runs in
the test process, on the test database."""

import datetime
import decimal
import uuid

from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

from duroxide_celery.contrib.django import get_client, get_harness, get_runtime

from .models import Order


class PlaceOrderTests(TransactionTestCase):
    def test_the_store_follows_the_test_database(self):
        url = get_runtime().provider.store.engine.url
        self.assertEqual(url.database, connection.settings_dict["NAME"])

    def test_an_order_placed_through_the_view_is_reserved(self):
        response = self.client.post("/orders/", data={"item": "book", "quantity": 2}, content_type="application/json")
        self.assertEqual(response.status_code, 201)
        instance = response.json()["instance"]
        result = get_client().wait_for_orchestration(instance, 20_000)
        self.assertEqual(result.status, "Completed", result.error)
        self.assertEqual(result.output["item"], "book")
        self.assertEqual(Order.objects.get(pk=response.json()["order"]).status, "reserved")

    def test_a_start_in_a_rolled_back_transaction_never_happens(self):
        class Rollback(Exception):
            pass

        try:
            with transaction.atomic():
                get_client().start_orchestration("never-1", "PlaceOrder", 1)
                raise Rollback
        except Rollback:
            pass
        self.assertEqual(get_client().get_status("never-1").status, "NotFound")

    def test_a_bulk_start_waits_for_the_commit_and_a_rollback_starts_none(self):
        class Rollback(Exception):
            pass

        try:
            with transaction.atomic():
                get_client().start_orchestrations([("never-2", "Echo", 1), ("never-3", "Echo", 2)])
                raise Rollback
        except Rollback:
            pass
        for never in ("never-2", "never-3"):
            self.assertEqual(get_client().get_status(never).status, "NotFound")
        with transaction.atomic():
            get_client().start_orchestrations([("bulk-1", "Echo", 1), ("bulk-2", "Echo", {"n": 2})])
            self.assertEqual(get_client().get_status("bulk-1").status, "NotFound")  # not before the commit
        self.assertEqual(get_client().wait_for_orchestration("bulk-1", 20_000).output, 1)
        self.assertEqual(get_client().wait_for_orchestration("bulk-2", 20_000).output, {"n": 2})
        with self.assertRaisesMessage(ValueError, "starts[1]: instance id must not be empty"):
            get_client().start_orchestrations([("bulk-3", "Echo", 3), ("", "Echo", 4)])  # refused at the call
        self.assertEqual(get_client().get_status("bulk-3").status, "NotFound")

    def test_everyday_django_values_are_encoded_with_djangos_json_encoder(self):
        order_uuid = uuid.UUID("12345678-1234-5678-1234-567812345678")
        value = {
            "price": decimal.Decimal("9.99"),
            "at": datetime.datetime(2026, 12, 1, 8, 30, tzinfo=datetime.UTC),
            "id": order_uuid,
        }
        get_client().start_orchestration("echo-1", "Echo", value)
        result = get_client().wait_for_orchestration("echo-1", 20_000)
        self.assertEqual(result.status, "Completed", result.error)
        self.assertEqual(result.output, {"price": "9.99", "at": "2026-12-01T08:30:00Z", "id": str(order_uuid)})


class PlaceOrderHarnessTests(TestCase):
    """A plain TestCase: the harness runs the workflow in the test's thread and transaction."""

    def test_the_activity_sees_the_tests_uncommitted_row(self):
        order = Order.objects.create(item="pen", quantity=4)
        result = get_harness().run("PlaceOrder", order.pk)
        self.assertEqual(result.status, "Completed", result.error)
        self.assertEqual(result.output, {"order": order.pk, "item": "pen", "quantity": 4})
        order.refresh_from_db()
        self.assertEqual(order.status, "reserved")


class AdminBadInputTests(TransactionTestCase):
    """Text no stored instance can hold (a NUL) names nothing: a 404 or an empty list, never PostgreSQL's
    DataError (a 500)."""

    def setUp(self):
        from django.contrib.auth.models import User

        self.client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))

    def test_an_instance_id_with_a_nul_is_not_found(self):
        for url in (
            "/admin/duroxide/instance/%00/change/",
            "/admin/duroxide/instance/a%00b/change/",
            "/admin/duroxide/instance/a%00b/raw/?field=output",
        ):
            self.assertEqual(self.client.get(url).status_code, 404, url)
        self.assertEqual(
            self.client.post("/admin/duroxide/instance/%00/change/", {"_action": "cancel"}).status_code, 404
        )

    def test_a_filter_with_a_nul_lists_nothing(self):
        get_client().start_orchestration("listed-1", "Echo", 1)
        self.assertContains(self.client.get("/admin/duroxide/instance/"), "listed-1")
        for query in ({"name": "\x00"}, {"q": "a\x00"}, {"status": "Running\x00"}):
            response = self.client.get("/admin/duroxide/instance/", query)
            self.assertEqual(response.status_code, 200, query)
            self.assertNotContains(response, "listed-1")
