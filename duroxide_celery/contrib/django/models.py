"""No tables of its own: unmanaged models, so the durable workflows admin has a place in the admin index and
Django's usual permissions (`duroxide.view_instance`, `duroxide.change_instance`, `duroxide.delete_instance`, and
`duroxide.view_payloads` to see payloads in the admin and the dashboard).

The admin never queries these models: its views read the store (the Client, or read-only SQL through the store's
own engine, wherever settings.DUROXIDE puts it) and write only through the Client (see `admin`).
"""

from __future__ import annotations

from django.db import models


class Instance(models.Model):
    instance_id = models.CharField(max_length=512, primary_key=True)

    class Meta:
        managed = False  # the store's tables belong to its Alembic migrations (`manage.py duroxide migrate`)
        db_table = "dx_instances"
        verbose_name = "workflow instance"
        verbose_name_plural = "workflow instances"
        default_permissions = ("view", "change", "delete")
        permissions = [("view_payloads", "Can see workflow payloads (inputs, outputs, event data) in the admin")]

    def __str__(self) -> str:
        return self.instance_id


class Dashboard(models.Model):
    """The web dashboard's entry in the admin index (/admin/duroxide/dashboard/, see `dashboard`): no table, no
    permissions of its own (it asks for the Instance ones)."""

    id = models.CharField(max_length=1, primary_key=True)

    class Meta:
        managed = False  # never created, never queried
        db_table = "duroxide_dashboard"
        verbose_name = "workflow dashboard"
        verbose_name_plural = "workflow dashboard"
        default_permissions = ()
