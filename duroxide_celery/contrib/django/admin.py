"""The durable workflows admin: "Durable workflows > Workflow instances" in Django's admin.

Custom admin views behind a ModelAdmin of the unmanaged `Instance` model (which has no table and is never queried),
so the pages live under the project's admin site with its login, staff check, CSRF protection, messages and look,
whichever database or schema holds the store. Reads use the Client or read-only SQL through the store's own engine
(`admin_reads`); every change (cancel, raise event, enqueue event, delete, prune) is a Client call.

Permissions (superusers have them all): staff users with `duroxide.view_instance` (or `change_instance`) see the
pages; cancel, raise event, enqueue event and prune need `duroxide.change_instance`; delete needs
`duroxide.delete_instance`. Payloads (output, error, custom status, KV values, the payload fields of history
events: the dashboard's list, `events.PAYLOAD_FIELDS`) show only with `duroxide.view_payloads`, on the pages and
in the raw view; without it they read HIDDEN (ids, names, versions, statuses, event kinds, times stay).

With settings.DUROXIDE['DASHBOARD'] on (the default when Flask is installed), "Workflow dashboard" serves the web
dashboard (timelines, "waiting on", live refresh) under the admin, with the same permissions and
`duroxide.view_payloads` to see payloads there (see `dashboard`).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from ...replay.events import PAYLOAD_FIELDS
from . import admin_reads as reads
from . import dashboard
from .models import Dashboard, Instance

STATUSES = ("Running", "Completed", "Failed", "ContinuedAsNew")
#: Characters of a payload shown inline; the rest behind "show all" (or the raw view, when very long).
PREVIEW_CHARS = 200
INLINE_CHARS = 20_000
#: What a payload reads as for a user without duroxide.view_payloads.
HIDDEN = "hidden (needs the view_payloads permission)"


def _client() -> Any:
    from . import get_client

    return get_client()


def _store() -> Any:
    from . import get_runtime

    return get_runtime().provider.store


# -- forms ---------------------------------------------------------------------------------------------------------
class JSONDataField(forms.CharField):
    """JSON text, parsed; empty means null. Invalid JSON is a form error, never a 500."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 60, "placeholder": 'JSON, e.g. {"approved": true}'})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(required=False, strip=True, **kwargs)

    def clean(self, value: Any) -> Any:
        text = super().clean(value)
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Enter valid JSON ({exc}).", code="invalid_json") from None


class CancelForm(forms.Form):
    reason = forms.CharField(required=False, max_length=1000, help_text="Becomes the error text.")


class RaiseEventForm(forms.Form):
    event_name = forms.CharField(max_length=256, label="Event name")
    data = JSONDataField(label="Data (JSON)")


class EnqueueEventForm(forms.Form):
    queue_name = forms.CharField(max_length=256, label="Queue name")
    data = JSONDataField(label="Data (JSON)")


class DeleteForm(forms.Form):
    force = forms.BooleanField(required=False, help_text="Delete even if it (or a sub-orchestration) is running.")
    confirm = forms.BooleanField(label="Yes, delete this instance and its whole sub-orchestration tree")


class PruneForm(forms.Form):
    keep_last = forms.IntegerField(
        min_value=1, initial=1, label="Keep last", help_text="Executions to keep; the current one is always kept."
    )


ACTIONS: dict[str, tuple[type[forms.Form], str]] = {
    "cancel": (CancelForm, "change"),
    "raise_event": (RaiseEventForm, "change"),
    "enqueue_event": (EnqueueEventForm, "change"),
    "prune": (PruneForm, "change"),
    "delete": (DeleteForm, "delete"),
}


# -- helpers -------------------------------------------------------------------------------------------------------
def preview(text: str | None, show: bool = True) -> dict[str, Any] | None:
    """What the templates show of a payload (always autoescaped there): a short head, and the whole when it is
    not too long to inline; or, when not `show`, only HIDDEN."""
    if text is None:
        return None
    if not show:
        return {"hidden": HIDDEN}
    return {
        "head": text[:PREVIEW_CHARS],
        "truncated": len(text) > PREVIEW_CHARS,
        "full": text if len(text) <= INLINE_CHARS else None,
        "length": len(text),
    }


def redact_event(text: str) -> str:
    """A history event's stored data (a JSON object) with the values of its payload fields replaced by HIDDEN;
    the other fields, and a failure's category and kind, stay."""
    try:
        data = json.loads(text)
    except ValueError:
        return HIDDEN
    if not isinstance(data, dict):
        return HIDDEN
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in PAYLOAD_FIELDS or value is None:
            out[key] = value
        elif key == "details" and isinstance(value, dict):
            out[key] = {k: v if k in ("category", "kind") else HIDDEN for k, v in value.items()}
        else:
            out[key] = HIDDEN
    return json.dumps(out, separators=(",", ":"))


def _page_number(request: HttpRequest, name: str) -> int:
    try:
        return max(1, int(request.GET.get(name, "1")))
    except ValueError:
        return 1


def _day_start(day: str | None) -> int | None:
    """Midnight (the current time zone) of a YYYY-MM-DD date, as epoch ms; None if empty or not a date."""
    if not day:
        return None
    try:
        date = datetime.strptime(day, "%Y-%m-%d").date()
    except ValueError:
        return None
    return reads.to_ms(timezone.make_aware(datetime.combine(date, datetime.min.time())))


def _day_after(day: str | None) -> int | None:
    start = _day_start(day)
    return None if start is None else reads.to_ms(reads.to_datetime(start) + timedelta(days=1))


def _pages(page: int, count: int) -> list[int | None]:
    """Page numbers to link (None: a gap)."""
    wanted = {1, count, *range(page - 2, page + 3)}
    out: list[int | None] = []
    last = 0
    for n in sorted(p for p in wanted if 1 <= p <= count):
        if n > last + 1:
            out.append(None)
        out.append(n)
        last = n
    return out


class _Params:
    """The changelist's query string: links that change one parameter and keep the others."""

    KEYS = ("status", "name", "q", "created__gte", "created__lt", "updated__gte", "updated__lt")

    def __init__(self, request: HttpRequest):
        self.values = {k: request.GET[k] for k in self.KEYS if request.GET.get(k)}

    def url(self, **changes: Any) -> str:
        values = dict(self.values)
        for key, value in changes.items():
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value
        return "?" + urlencode(values) if values else "?"


def _date_choices(params: _Params, field: str) -> list[dict[str, Any]]:
    today = timezone.localdate()
    tomorrow = (today + timedelta(days=1)).isoformat()
    low, high = f"{field}__gte", f"{field}__lt"
    choices = [
        ("Any date", None, None),
        ("Today", today.isoformat(), tomorrow),
        ("Past 7 days", (today - timedelta(days=7)).isoformat(), tomorrow),
        ("Past 30 days", (today - timedelta(days=30)).isoformat(), tomorrow),
        ("This year", today.replace(month=1, day=1).isoformat(), tomorrow),
    ]
    current = (params.values.get(low), params.values.get(high))
    return [
        {"label": label, "url": params.url(**{low: a, high: b}), "selected": current == (a, b)}
        for label, a, b in choices
    ]


# -- the ModelAdmin ------------------------------------------------------------------------------------------------
@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    """Instances list, instance page with actions, and a raw view of one payload (text/plain)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view  # login, is_staff, CSRF protection, never_cache
        return [
            path("", wrap(self.changelist_view), name=f"{prefix}_changelist"),
            path("<path:object_id>/change/", wrap(self.change_view), name=f"{prefix}_change"),
            path("<path:object_id>/raw/", wrap(self.raw_view), name=f"{prefix}_raw"),
        ]

    # The admin's own URL names for an object ("history", "delete") are not provided: redirect to the page.
    def get_view_on_site_url(self, obj: Any = None) -> None:
        return None

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "has_view_permission": True,
            "has_change_permission": self.has_change_permission(request),
            "has_delete_permission": self.has_delete_permission(request),
            "dashboard_url": self._dashboard_url(),
            **extra,
        }

    def _dashboard_url(self) -> str | None:
        """The web dashboard's home under this admin site, if it is on (settings.DUROXIDE['DASHBOARD'])."""
        if not self.admin_site.is_registered(Dashboard):
            return None
        return reverse("admin:duroxide_dashboard_changelist", current_app=self.admin_site.name)

    def _require_view(self, request: HttpRequest) -> None:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied

    # -- list ------------------------------------------------------------------------------------------------------
    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        self._require_view(request)
        params = _Params(request)
        values = params.values
        query = reads.InstanceQuery(
            status=values.get("status"),
            name=values.get("name"),
            search=values.get("q"),
            created_from=_day_start(values.get("created__gte")),
            created_to=_day_start(values.get("created__lt")),
            updated_from=_day_start(values.get("updated__gte")),
            updated_to=_day_start(values.get("updated__lt")),
        )
        store = _store()
        per_page = reads.INSTANCES_PER_PAGE
        page = _page_number(request, "p")
        rows, total = reads.list_instances(store, query, (page - 1) * per_page, per_page)
        page_count = max(1, -(-total // per_page))
        statuses, names = reads.facets(store, query)
        counts = dict(statuses)
        status_choices = [{"label": "All", "url": params.url(status=None), "selected": not query.status}] + [
            {"label": f"{s} ({counts.get(s, 0)})", "url": params.url(status=s), "selected": query.status == s}
            for s in sorted(set(STATUSES) | set(counts))
        ]
        name_choices = [{"label": "All", "url": params.url(name=None), "selected": not query.name}] + [
            {"label": f"{n} ({c})", "url": params.url(name=n), "selected": query.name == n} for n, c in names
        ]
        for row in rows:
            row["url"] = reverse("admin:duroxide_instance_change", args=[quote(row["instance_id"])])
            row["created"] = reads.to_datetime(row["created_at"])
            row["updated"] = reads.to_datetime(row["updated_at"])
            row["version"] = row["orchestration_version"] or row["requested_version"]
        context = self._context(
            request,
            "Workflow instances",
            rows=rows,
            total=total,
            page=page,
            page_count=page_count,
            page_links=[
                {"number": n, "url": None if n is None else params.url(p=n), "current": n == page}
                for n in _pages(page, page_count)
            ],
            search=values.get("q", ""),
            hidden=[(k, v) for k, v in values.items() if k != "q"],
            filters=[
                ("status", status_choices),
                ("orchestration name", name_choices),
                ("created", _date_choices(params, "created")),
                ("updated", _date_choices(params, "updated")),
            ],
            filtered=bool(values),
            metrics=_client().get_system_metrics(),
            **(extra_context or {}),
        )
        return TemplateResponse(request, "duroxide/admin/instance_list.html", context)

    # -- one instance ----------------------------------------------------------------------------------------------
    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        self._require_view(request)
        instance_id = unquote(object_id)
        if not reads.storable(instance_id):
            raise Http404(f"no workflow instance {instance_id!r}")
        forms_by_action: dict[str, forms.Form] = {}
        if request.method == "POST":
            response = self._act(request, instance_id, forms_by_action)
            if response is not None:
                return response
        return self._render_instance(request, instance_id, forms_by_action, extra_context)

    def _act(self, request: HttpRequest, instance_id: str, bound: dict[str, forms.Form]) -> HttpResponse | None:
        """Run the POSTed action through the Client: a redirect when done, None to show the page again (with the
        form's errors)."""
        action = request.POST.get("_action", "")
        if action not in ACTIONS:
            raise Http404(f"unknown action {action!r}")
        form_class, needs = ACTIONS[action]
        allowed = self.has_delete_permission(request) if needs == "delete" else self.has_change_permission(request)
        if not allowed:
            raise PermissionDenied
        form = form_class(request.POST, prefix=action)
        bound[action] = form
        if not form.is_valid():
            return None
        data = form.cleaned_data
        client = _client()
        page = request.get_full_path()
        try:
            if action in ("cancel", "raise_event", "enqueue_event"):
                status = client.get_status(instance_id).status
                if status != "Running":
                    form.add_error(None, f"The instance is {status}, not Running: nothing was sent.")
                    return None
            if action == "cancel":
                client.cancel_instance(instance_id, data["reason"] or None)
                messages.success(request, f"Cancellation requested for {instance_id}.")
            elif action == "raise_event":
                client.raise_event(instance_id, data["event_name"], data["data"])
                messages.success(request, f"Event {data['event_name']!r} raised on {instance_id}.")
            elif action == "enqueue_event":
                client.enqueue_event(instance_id, data["queue_name"], data["data"])
                messages.success(request, f"Message enqueued on {data['queue_name']!r} of {instance_id}.")
            elif action == "prune":
                from ...types import PruneOptions

                result = client.prune_executions(instance_id, PruneOptions(keep_last=data["keep_last"]))
                messages.success(
                    request,
                    f"Pruned {result.executions_deleted} executions ({result.events_deleted} events) of {instance_id}.",
                )
            elif action == "delete":
                result = client.delete_instance(instance_id, force=data["force"])
                messages.success(
                    request,
                    f"Deleted {instance_id}: {result.instances_deleted} instances, {result.executions_deleted} "
                    f"executions, {result.events_deleted} events.",
                )
                return HttpResponseRedirect(reverse("admin:duroxide_instance_changelist"))
        except (ValueError, TypeError, LookupError, RuntimeError) as exc:  # the Client's refusals, as form errors
            form.add_error(None, str(exc))
            return None
        return HttpResponseRedirect(page)

    def _render_instance(
        self,
        request: HttpRequest,
        instance_id: str,
        bound: dict[str, forms.Form],
        extra_context: dict[str, Any] | None,
    ) -> HttpResponse:
        store = _store()
        client = _client()
        row = store.get_instance(instance_id)
        if row is None:
            if bound:  # e.g. deleted meanwhile
                messages.error(request, f"Instance {instance_id} does not exist (any more).")
                return HttpResponseRedirect(reverse("admin:duroxide_instance_changelist"))
            raise Http404(f"no workflow instance {instance_id!r}")
        show = dashboard.may_see_payloads(request.user)
        executions = store.list_executions(instance_id)
        current = row["current_execution_id"]
        try:
            execution = int(request.GET.get("execution", current))
        except ValueError:
            execution = current
        page = _page_number(request, "events")
        per_page = reads.EVENTS_PER_PAGE
        events, event_total = reads.history_page(store, instance_id, execution, (page - 1) * per_page, per_page)
        raw_url = reverse("admin:duroxide_instance_raw", args=[quote(instance_id)])
        for event in events:
            event["time"] = reads.to_datetime(event["timestamp_ms"])
            event["preview"] = preview(event["data"] if show else redact_event(event["data"]))
            event["raw"] = raw_url + "?" + urlencode({"execution": execution, "event": event["event_id"]})
        change_url = reverse("admin:duroxide_instance_change", args=[quote(instance_id)])
        for each in executions:
            each["started"] = reads.to_datetime(each["started_at"])
            each["completed"] = reads.to_datetime(each["completed_at"])
            each["output_preview"] = preview(each["output"], show)
            each["url"] = change_url + "?" + urlencode({"execution": each["execution_id"]})
            each["raw"] = raw_url + "?" + urlencode({"field": "output", "execution": each["execution_id"]})
            each["selected"] = each["execution_id"] == execution
        kv_rows = reads.kv_entries(store, instance_id)
        for entry in kv_rows:
            entry["preview"] = preview(entry["value"], show)
            entry["updated"] = reads.to_datetime(entry["last_updated_at_ms"])
            entry["raw"] = raw_url + "?" + urlencode({"kv": entry["key"]})
        tree = self._tree(client, store, instance_id)
        parent = row["parent_instance_id"]
        forms_shown = {name: bound.get(name) or cls(prefix=name) for name, (cls, _) in ACTIONS.items()}
        pages = -(-event_total // per_page) if event_total else 1
        context = self._context(
            request,
            f"Workflow instance {instance_id}",
            instance_id=instance_id,
            row=row,
            version=row["orchestration_version"] or row["requested_version"],
            created=reads.to_datetime(row["created_at"]),
            updated=reads.to_datetime(row["updated_at"]),
            output=preview(row["output"], show),
            error=preview(row["error"], show),
            custom_status=preview(row["custom_status"], show),
            payloads_hidden=not show,
            raw_url=raw_url,
            parent=parent,
            parent_url=reverse("admin:duroxide_instance_change", args=[quote(parent)]) if parent else None,
            executions=executions,
            execution=execution,
            events=events,
            event_total=event_total,
            event_page=page,
            event_pages=pages,
            event_prev=change_url + "?" + urlencode({"execution": execution, "events": page - 1}) if page > 1 else None,
            event_next=(
                change_url + "?" + urlencode({"execution": execution, "events": page + 1}) if page < pages else None
            ),
            kv=kv_rows,
            kv_limited=len(kv_rows) >= reads.KV_LIMIT,
            tree=tree,
            forms=forms_shown,
            running=row["status"] == "Running",
            dashboard_instance_url=(
                self._dashboard_url() + "instance?" + urlencode({"id": instance_id}) if self._dashboard_url() else None
            ),
            **(extra_context or {}),
        )
        status = 400 if any(f.is_bound and f.errors for f in bound.values()) else 200
        return TemplateResponse(request, "duroxide/admin/instance_detail.html", context, status=status)

    @staticmethod
    def _tree(client: Any, store: Any, instance_id: str) -> list[dict[str, Any]]:
        """This instance and its sub-orchestrations, depth first, each with its depth (for indentation)."""
        try:
            ids = client.get_instance_tree(instance_id).all_ids[: reads.TREE_LIMIT]
        except LookupError:
            return []
        found = reads.summaries(store, ids)
        children: dict[str, list[str]] = {}
        for iid in ids[1:]:
            parent = (found.get(iid) or {}).get("parent_instance_id")
            children.setdefault(parent, []).append(iid)
        out: list[dict[str, Any]] = []
        stack = [(instance_id, 0)]
        while stack:
            iid, depth = stack.pop()
            info = found.get(iid) or {}
            out.append(
                {
                    "instance_id": iid,
                    "depth": depth,
                    "indent": depth * 2,
                    "name": info.get("orchestration_name"),
                    "status": info.get("status"),
                    "url": reverse("admin:duroxide_instance_change", args=[quote(iid)]),
                    "current": iid == instance_id,
                }
            )
            stack.extend((child, depth + 1) for child in reversed(children.get(iid, [])))
        return out

    # -- the whole of one payload ------------------------------------------------------------------------------------
    def raw_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """One stored text as text/plain (never HTML): output, error, custom status, a KV value or an event's
        data; without duroxide.view_payloads, HIDDEN (an event: its data with the payload fields HIDDEN)."""
        self._require_view(request)
        instance_id = unquote(object_id)
        if not reads.storable(instance_id):
            raise Http404("nothing stored there")
        store = _store()
        text: str | None = None
        is_event = False
        field = request.GET.get("field")
        if field == "output" and "execution" in request.GET:
            wanted = request.GET["execution"]
            outputs = {str(e["execution_id"]): e["output"] for e in store.list_executions(instance_id)}
            text = outputs.get(wanted)
        elif field in ("output", "error", "custom_status"):
            row = store.get_instance(instance_id)
            text = None if row is None else row[field]
        elif "kv" in request.GET:
            text = _client().get_kv_value(instance_id, request.GET["kv"])
        elif "event" in request.GET:
            try:
                execution, event = int(request.GET.get("execution", "")), int(request.GET["event"])
            except ValueError:
                raise Http404("bad execution or event id") from None
            if 0 <= execution < 2**31 and 0 <= event < 2**31:
                text = reads.history_event(store, instance_id, execution, event)
                is_event = True
        if text is None:
            raise Http404("nothing stored there")
        if not dashboard.may_see_payloads(request.user):
            text = redact_event(text) if is_event else HIDDEN
        response = HttpResponse(text, content_type="text/plain; charset=utf-8")
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response


# -- the web dashboard ---------------------------------------------------------------------------------------------
class DashboardAdmin(admin.ModelAdmin):
    """ "Workflow dashboard" in the admin index: the web dashboard (duroxide_celery.dashboard) served at
    /admin/duroxide/dashboard/ behind the admin's login, with the permissions `dashboard` describes."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return dashboard.may_see(request.user)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return dashboard.may_see(request.user)

    def get_urls(self) -> list[Any]:
        # Exempt from Django's CSRF middleware: the dashboard checks its own token and the Origin on every POST.
        view = self.admin_site.admin_view(csrf_exempt(self.dashboard_view))  # login, is_staff, never_cache
        return [
            path("", view, {"rest": ""}, name="duroxide_dashboard_changelist"),
            path("<path:rest>", view, name="duroxide_dashboard_page"),
        ]

    def dashboard_view(self, request: HttpRequest, rest: str) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return dashboard.call_wsgi(dashboard.dashboard_app(), request, rest)


if dashboard.enabled():
    admin.site.register(Dashboard, DashboardAdmin)
