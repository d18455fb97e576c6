from django.db import models


class Product(models.Model):
    sku = models.CharField(max_length=40, unique=True)
    stock = models.PositiveIntegerField(default=0)


class Order(models.Model):
    sku = models.CharField(max_length=40)
    quantity = models.PositiveIntegerField()
    card = models.CharField(max_length=40)
    status = models.CharField(max_length=20, default="placed")

    @property
    def instance_id(self) -> str:
        return f"order-{self.pk}"
