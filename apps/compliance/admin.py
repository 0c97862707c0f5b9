"""Compliance officers read the inference record, the access events and the audit log of changes in their
tenant's admin, filter them, and export any filtered list as CSV; nobody, superusers included, edits them."""

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, time
from typing import Any

from auditlog.admin import LogEntryAdmin as AuditlogLogEntryAdmin
from auditlog.models import LogEntry
from auditlog.registry import auditlog
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import BadRequest, PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.http import require_GET

from apps.compliance import selectors
from apps.compliance.exports import Column, csv_export_response
from apps.compliance.models import AccessEvent, ComplianceReport, InferenceRecord, RetainedPayload, RetentionPurge
from apps.compliance.payloads import PayloadUnreadable, payload_read
from apps.compliance.services import access_event_from_request
from apps.tenants.admin_mixins import ReadOnlyAdminMixin, TenantOnlyAdminMixin

# --- filters ------------------------------------------------------------------------------------------------


class DateTimeRangeFilter(admin.FieldListFilter):
    """`<field>_from` (inclusive) and `<field>_to` (exclusive): any time range, not only the hierarchy's days.

    A bare date means its midnight in the current time zone, so `from=2025-03-01&to=2025-04-01` is March.
    """

    template = "admin/compliance/datetime_range_filter.html"

    def __init__(self, field, request, params, model, model_admin, field_path) -> None:
        self.param_from = f"{field_path}_from"
        self.param_to = f"{field_path}_to"
        super().__init__(field, request, params, model, model_admin, field_path)
        self.bounds = {name: self._parse(name) for name in (self.param_from, self.param_to)}

    def expected_parameters(self) -> list[str]:
        return [self.param_from, self.param_to]

    def _raw(self, name: str) -> str:
        value = self.used_parameters.get(name) or [""]
        return (value[-1] if isinstance(value, list) else value).strip()

    def _parse(self, name: str) -> datetime | None:
        raw = self._raw(name)
        if not raw:
            return None
        try:
            moment = parse_datetime(raw)
            if moment is None and (day := parse_date(raw)) is not None:
                moment = datetime.combine(day, time.min)
        except ValueError as error:
            raise IncorrectLookupParameters(error) from error
        if moment is None:
            raise IncorrectLookupParameters(f"{name}: not a date or time: {raw!r}")
        return timezone.make_aware(moment) if timezone.is_naive(moment) else moment

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        start, end = self.bounds[self.param_from], self.bounds[self.param_to]
        if start is not None:
            queryset = queryset.filter(**{f"{self.field_path}__gte": start})
        if end is not None:
            queryset = queryset.filter(**{f"{self.field_path}__lt": end})
        return queryset

    def get_facet_counts(self, pk_attname, filtered_qs) -> dict:
        return {}

    def choices(self, changelist) -> Iterator[dict[str, Any]]:
        own = {self.param_from, self.param_to}
        yield {
            "param_from": self.param_from,
            "value_from": self._raw(self.param_from),
            "param_to": self.param_to,
            "value_to": self._raw(self.param_to),
            "hidden": [(k, v) for k, values in changelist.filter_params.items() if k not in own for v in values],
            "reset_url": changelist.get_query_string(remove=list(own)),
            "active": any(self.bounds.values()),
        }


class _ChoiceFilter(admin.SimpleListFilter):
    """Exact match of `field` on a value from `choices()`; choices come from small tables, not the audit rows."""

    field: str

    def choices_for(self) -> Sequence[tuple[Any, str]]:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> Sequence[tuple[Any, str]]:
        return self.choices_for()

    def clean(self, value: str) -> Any:
        return value

    def has_output(self) -> bool:
        # A value that is not among the choices (a deleted key, a model no longer registered) still filters.
        return super().has_output() or self.value() is not None

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(**{self.field: self.clean(value)})


class _IdFilter(_ChoiceFilter):
    def clean(self, value: str) -> int:
        if not value.isdigit():
            raise IncorrectLookupParameters(f"{self.parameter_name}: not a number: {value!r}")
        return int(value)


class UserFilter(_IdFilter):
    title = "user"
    parameter_name = field = "user_id"

    def choices_for(self) -> Sequence[tuple[Any, str]]:
        return selectors.member_choices()


class ActorFilter(UserFilter):
    title = "actor"
    parameter_name = field = "actor_id"


class KeyFilter(_ChoiceFilter):
    title = "key"
    parameter_name = field = "key_prefix"

    def choices_for(self) -> Sequence[tuple[Any, str]]:
        return selectors.key_choices()


class ModelNameFilter(_ChoiceFilter):
    title = "model"
    parameter_name = field = "model_name"

    def choices_for(self) -> Sequence[tuple[Any, str]]:
        return selectors.model_name_choices()


class ModelVersionFilter(_IdFilter):
    title = "version"
    parameter_name = field = "model_version"

    def choices_for(self) -> Sequence[tuple[Any, str]]:
        return selectors.model_version_choices()


class AuditedModelFilter(_IdFilter):
    """The kinds of objects the audit log covers (keys, models, aliases, deployments, users and their roles)."""

    title = "object type"
    parameter_name = field = "content_type_id"

    def choices_for(self) -> Sequence[tuple[Any, str]]:
        types = ContentType.objects.get_for_models(*auditlog.get_models())  # cached after the first request
        return sorted(((ct.pk, f"{ct.app_label} | {ct.name}") for ct in types.values()), key=lambda c: c[1])


# --- CSV export ---------------------------------------------------------------------------------------------


class CsvExportAdminMixin:
    """An "Export CSV" button on the list that streams exactly the rows the list shows, across all its pages."""

    change_list_template = "admin/compliance/change_list_export.html"
    export_name: str
    export_columns: Sequence[Column] = ()

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_export"
        export = self.admin_site.admin_view(require_GET(self.export_view))
        return [path("export/", export, name=name), *super().get_urls()]

    def export_view(self, request: HttpRequest) -> StreamingHttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters as error:
            raise BadRequest(str(error)) from error
        return csv_export_response(
            queryset=changelist.queryset,  # filtered, searched and ordered like the list
            columns=self.export_columns,
            name=self.export_name,
            actor=request.user,
            query_string=request.GET.urlencode(),
        )


class MissingIsNotFoundAdminMixin:
    """Another tenant's id (or a made-up one) is a plain 404, not a redirect that hints at anything."""

    def _get_obj_does_not_exist_redirect(self, request: HttpRequest, opts, object_id: str) -> HttpResponse:
        raise Http404


class _ComplianceAdmin(
    TenantOnlyAdminMixin, ReadOnlyAdminMixin, MissingIsNotFoundAdminMixin, CsvExportAdminMixin, admin.ModelAdmin
):
    show_full_result_count = False  # a count of the whole table on every page is too dear for the record
    show_facets = admin.ShowFacets.NEVER


def _user_display(obj: Any) -> str:
    if obj.user_email:
        return obj.user_email
    return f"#{obj.user_id} (deleted)" if obj.user_id else "—"


# --- inference record ---------------------------------------------------------------------------------------


@admin.register(InferenceRecord)
class InferenceRecordAdmin(_ComplianceAdmin):
    list_display = (
        "received_at",
        "request_id",
        "key_prefix",
        "user",
        "model_name",
        "model_version",
        "alias",
        "status",
        "error_code",
        "latency_ms",
        "tokens",
        "cost",
        "server_replica",
    )
    list_filter = (
        ("received_at", DateTimeRangeFilter),
        UserFilter,
        KeyFilter,
        ModelNameFilter,
        ModelVersionFilter,
        "status",
    )
    date_hierarchy = "received_at"
    # Both are matched as prefixes (an exact id is its own prefix) through `varchar_pattern_ops` indexes.
    search_fields = ("request_id", "input_sha256")
    search_help_text = "Request id or SHA-256 of the input (whole or a prefix)."
    readonly_fields = ("user", "kept_payload")
    export_name = "inference-records"
    export_columns = (
        ("sequence", lambda r: r.sequence),
        ("request_id", lambda r: r.request_id),
        ("received_at", lambda r: r.received_at.isoformat()),
        ("dispatched_at", lambda r: r.dispatched_at.isoformat() if r.dispatched_at else ""),
        ("answered_at", lambda r: r.answered_at.isoformat() if r.answered_at else ""),
        ("key_prefix", lambda r: r.key_prefix),
        ("user_id", lambda r: r.user_id),
        ("user_email", lambda r: r.user_email),
        ("client_ip", lambda r: r.client_ip),
        ("model_name", lambda r: r.model_name),
        ("model_version", lambda r: r.model_version),
        ("alias", lambda r: r.alias),
        ("run_id", lambda r: r.run_id),
        ("deployment_id", lambda r: r.deployment_id),
        ("server_replica", lambda r: r.server_replica),
        ("status", lambda r: r.status),
        ("error_code", lambda r: r.error_code),
        ("input_sha256", lambda r: r.input_sha256),
        ("output_sha256", lambda r: r.output_sha256),
        ("latency_ms", lambda r: r.latency_ms),
        ("upstream_ms", lambda r: r.upstream_ms),
        ("prompt_tokens", lambda r: r.prompt_tokens),
        ("completion_tokens", lambda r: r.completion_tokens),
        ("tokens_estimated", lambda r: r.tokens_estimated),
        ("cost", lambda r: r.cost),
        ("prev_hash", lambda r: r.prev_hash),
        ("record_hash", lambda r: r.record_hash),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[InferenceRecord]:
        return selectors.with_user_email(super().get_queryset(request))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[InferenceRecord], search_term: str
    ) -> tuple[QuerySet[InferenceRecord], bool]:
        for term in search_term.split():
            queryset = queryset.filter(Q(request_id__startswith=term) | Q(input_sha256__startswith=term.lower()))
        return queryset, False

    @admin.display(description="user", ordering="user_email")
    def user(self, obj: InferenceRecord) -> str:
        return _user_display(obj)

    @admin.display(description="tokens (in/out)")
    def tokens(self, obj: InferenceRecord) -> str:
        if obj.prompt_tokens is None and obj.completion_tokens is None:
            return "—"
        estimated = " (est.)" if obj.tokens_estimated else ""
        return f"{obj.prompt_tokens or 0}/{obj.completion_tokens or 0}{estimated}"

    @admin.display(description="kept payload")
    def kept_payload(self, obj: InferenceRecord) -> str:
        if not RetainedPayload.objects.filter(request_id=obj.request_id).exists():
            return "not kept (only the hashes are recorded)"
        url = reverse(f"{self.admin_site.name}:compliance_inferencerecord_payload", args=[obj.pk])
        return format_html('<a href="{}">Open the encrypted copy</a> (each opening is an access event)', url)

    def get_urls(self) -> list[URLPattern]:
        payload = path(
            "<path:object_id>/payload/",
            self.admin_site.admin_view(self.payload_view),
            name="compliance_inferencerecord_payload",
        )
        return [payload, *super().get_urls()]

    @method_decorator(require_GET)
    def payload_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The decrypted input and output of one request, for whoever may read kept payloads; audited."""
        if not request.user.has_perm("compliance.view_retainedpayload"):
            raise PermissionDenied
        record = self.get_object(request, object_id)
        if record is None:
            raise Http404
        try:
            kept, problem = payload_read(request_id=record.request_id), ""
        except PayloadUnreadable as error:
            kept, problem = None, str(error)
        if kept is None and not problem:
            raise Http404
        access_event_from_request(
            request, reason=AccessEvent.Reason.PAYLOAD_VIEWED, user_id=request.user.pk, detail=record.request_id
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "record": record,
            "title": f"Kept payload of {record.request_id}",
            "problem": problem,
            "input_json": json.dumps(kept["input"], indent=2, ensure_ascii=False) if kept else "",
            "output_json": json.dumps(kept["output"], indent=2, ensure_ascii=False) if kept else "",
        }
        return TemplateResponse(request, "admin/compliance/payload.html", context)


# --- access events ------------------------------------------------------------------------------------------


@admin.register(AccessEvent)
class AccessEventAdmin(_ComplianceAdmin):
    list_display = (
        "occurred_at",
        "reason",
        "key_prefix",
        "user",
        "client_ip",
        "method",
        "path",
        "request_id",
        "detail",
    )
    list_filter = (("occurred_at", DateTimeRangeFilter), "reason", UserFilter, KeyFilter)
    date_hierarchy = "occurred_at"
    search_fields = ("request_id", "key_prefix", "client_ip", "path", "detail")
    search_help_text = "Request id, key prefix, client IP, path or detail (contains)."
    readonly_fields = ("user",)
    export_name = "access-events"
    export_columns = (
        ("occurred_at", lambda e: e.occurred_at.isoformat()),
        ("reason", lambda e: e.reason),
        ("key_prefix", lambda e: e.key_prefix),
        ("user_id", lambda e: e.user_id),
        ("user_email", lambda e: e.user_email),
        ("client_ip", lambda e: e.client_ip),
        ("method", lambda e: e.method),
        ("path", lambda e: e.path),
        ("request_id", lambda e: e.request_id),
        ("detail", lambda e: e.detail),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[AccessEvent]:
        return selectors.with_user_email(super().get_queryset(request))

    @admin.display(description="user", ordering="user_email")
    def user(self, obj: AccessEvent) -> str:
        return _user_display(obj)


# --- audit log of changes -----------------------------------------------------------------------------------

if admin.site.is_registered(LogEntry):
    admin.site.unregister(LogEntry)


@admin.register(LogEntry)
class AuditLogEntryAdmin(ReadOnlyAdminMixin, MissingIsNotFoundAdminMixin, CsvExportAdminMixin, AuditlogLogEntryAdmin):
    """django-auditlog's view of changes, with the officers' filters and export; read-only even on cascades.

    On the public host it shows the platform's own log (tenants, domains, staff): each schema has its own table.
    """

    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_filter = (("timestamp", DateTimeRangeFilter), AuditedModelFilter, ActorFilter, "action")
    search_fields = ("object_repr", "changes", "actor__email")
    search_help_text = "Object, changed values or actor's email (contains)."
    export_name = "audit-log"
    export_columns = (
        ("timestamp", lambda e: e.timestamp.isoformat()),
        ("action", lambda e: e.get_action_display()),
        ("object_type", lambda e: f"{e.content_type.app_label}.{e.content_type.model}"),
        ("object_pk", lambda e: e.object_pk),
        ("object_repr", lambda e: e.object_repr),
        ("actor_id", lambda e: e.actor_id),
        ("actor_email", lambda e: e.actor.email if e.actor else e.actor_email),
        ("remote_addr", lambda e: e.remote_addr),
        ("changes", lambda e: json.dumps(e.changes_dict, ensure_ascii=False, default=str)),
        ("correlation_id", lambda e: e.cid),
    )


# --- compliance reports -------------------------------------------------------------------------------------


@admin.register(ComplianceReport)
class ComplianceReportAdmin(TenantOnlyAdminMixin, ReadOnlyAdminMixin, MissingIsNotFoundAdminMixin, admin.ModelAdmin):
    """Reports are requested and read in the portal; the admin only lists them, never changes them."""

    list_display = ("pk", "period_start", "period_end", "model_name", "key_prefix", "requested_by", "status", "created")
    list_filter = ("status",)
    list_select_related = ("requested_by",)
    exclude = ("content",)  # the report as data: the portal page and the downloads show it readably
    show_full_result_count = False


# --- retention ----------------------------------------------------------------------------------------------


@admin.register(RetentionPurge)
class RetentionPurgeAdmin(TenantOnlyAdminMixin, ReadOnlyAdminMixin, MissingIsNotFoundAdminMixin, admin.ModelAdmin):
    """Every purge and its seal: what went, up to which record, and the hash the kept chain goes on from."""

    list_display = (
        "ran_at",
        "records_purged",
        "first_sequence",
        "through_sequence",
        "access_events_purged",
        "payloads_purged",
        "record_retention_days",
        "records_withheld",
    )
    date_hierarchy = "ran_at"
    show_full_result_count = False
