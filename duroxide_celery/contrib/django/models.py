"""No tables of its own: one unmanaged model, so the durable workflows admin has a place in the admin index and
Django's usual permissions (`duroxide.view_instance`, `duroxide.change_instance`, `duroxide.delete_instance`).

The admin never queries this model: its views read the store (the Client, or read-only SQL through the store's
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

    def __str__(self) -> str:
        return self.instance_id
