#!/usr/bin/env python
"""examples/django: a Django shop whose orders are durable workflows (see README.md next to this file)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
