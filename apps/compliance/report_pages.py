"""The portal's compliance reports: request one, watch it run, read it, download it as CSV, JSON or HTML.

Reports name every user, key and input hash of the tenant, so only owners and compliance officers open these
pages, and only after their second factor. Every download carries the report's SHA-256 in a header and in
its body, so a copy handed to an auditor can be checked against the portal. CSV and JSON are streamed: the
million input hashes of a busy month are read from storage as they are sent.
"""

from collections.abc import AsyncIterator, Iterator
from datetime import datetime, time, timedelta

from asgiref.sync import sync_to_async
from django import forms
from django.core.exceptions import ValidationError
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from apps.accounts.two_factor import otp_required_for_staff
from apps.compliance import selectors, services
from apps.compliance.models import ComplianceReport
from apps.compliance.reports import report_csv_lines, report_input_hashes_printed, report_json_chunks

SHA256_HEADER = "X-Content-SHA256"
# Characters of CSV per chunk sent: a million one-hash lines go out as a thousand writes, not a million.
CSV_CHUNK_CHARS = 1 << 16


class ReportForm(forms.Form):
    """Whole days in the portal's time zone; the last day is included (the stored end is the next midnight)."""

    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}), label="From")
    end = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}), label="To (included)")
    model_name = forms.ChoiceField(choices=(), required=False, label="Model")
    key_prefix = forms.ChoiceField(choices=(), required=False, label="API key")

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("auto_id", "report_%s")
        super().__init__(*args, **kwargs)
        self.fields["model_name"].choices = [("", "— all models —"), *selectors.model_name_choices()]
        self.fields["key_prefix"].choices = [("", "— all keys —"), *selectors.key_choices()]

    def period(self) -> tuple[datetime, datetime]:
        start = timezone.make_aware(datetime.combine(self.cleaned_data["start"], time.min))
        end = timezone.make_aware(datetime.combine(self.cleaned_data["end"] + timedelta(days=1), time.min))
        return start, end


def _forbidden(request: HttpRequest) -> HttpResponse:
    return render(request, "403.html", status=403)


def _in_progress(reports) -> bool:
    return any(r.status in (ComplianceReport.Status.QUEUED, ComplianceReport.Status.RUNNING) for r in reports)


@otp_required_for_staff
@require_http_methods(["GET", "POST"])
def reports(request: HttpRequest) -> HttpResponse:
    """The tenant's reports and the form that requests one; the page reloads itself while one is running."""
    if not selectors.report_readers_allowed(request.user):
        return _forbidden(request)
    form = ReportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        start, end = form.period()
        try:
            report = services.report_request(
                actor=request.user,
                start=start,
                end=end,
                model_name=form.cleaned_data["model_name"],
                key_prefix=form.cleaned_data["key_prefix"],
            )
        except ValidationError as error:
            form.add_error(None, error)
        else:
            return redirect("report_detail", report_id=report.pk)
    rows = list(selectors.report_list()[:100])
    context = {"form": form, "reports": rows, "refresh": _in_progress(rows)}
    return render(request, "portal/reports.html", context, status=422 if form.errors else 200)


@otp_required_for_staff
@require_GET
def report_detail(request: HttpRequest, report_id: int) -> HttpResponse:
    if not selectors.report_readers_allowed(request.user):
        return _forbidden(request)
    report = selectors.report_get(report_id=report_id)
    context = {"report": report, "content": report.content, "refresh": _in_progress([report])}
    return render(request, "portal/reports_detail.html", context)


def _joined(lines: Iterator[str], size: int = CSV_CHUNK_CHARS) -> Iterator[str]:
    batch: list[str] = []
    length = 0
    for line in lines:
        batch.append(line)
        length += len(line)
        if length >= size:
            yield "".join(batch)
            batch, length = [], 0
    if batch:
        yield "".join(batch)


def _streamed(request: HttpRequest, chunks: Iterator) -> Iterator | AsyncIterator:
    """The chunks as the server can stream them. Under ASGI, Django would first collect a sync iterator whole (70
    MB for a million hashes), so there each chunk is pulled in the request's sync thread, where its database
    connection is."""
    if not isinstance(request, ASGIRequest):
        return chunks

    async def pulled() -> AsyncIterator:
        pull = sync_to_async(next, thread_sensitive=True)
        while (chunk := await pull(chunks, None)) is not None:
            yield chunk

    return pulled()


def report_download_response(request: HttpRequest, *, report: ComplianceReport, fmt: str) -> HttpResponse:
    """The finished report as `fmt` (csv, json or html), with its SHA-256 in `X-Content-SHA256`."""
    name = f"compliance-report-{report.pk}"
    if fmt == "csv":
        lines = _streamed(request, _joined(report_csv_lines(report=report)))
        response: HttpResponse = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    elif fmt == "json":
        chunks = _streamed(request, report_json_chunks(report=report))
        response = StreamingHttpResponse(chunks, content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="{name}.json"'
    else:
        context = {"report": report, "content": report.content, "input_hashes": report_input_hashes_printed(report)}
        html = render_to_string("portal/report_print.html", context, request=request)
        response = HttpResponse(html, content_type="text/html; charset=utf-8")
    response[SHA256_HEADER] = report.content_sha256
    return response


@otp_required_for_staff
@require_GET
def report_download(request: HttpRequest, report_id: int, fmt: str) -> HttpResponse:
    if not selectors.report_readers_allowed(request.user):
        return _forbidden(request)
    report = selectors.report_get(report_id=report_id)
    if report.status != ComplianceReport.Status.DONE:
        return redirect("report_detail", report_id=report.pk)
    return report_download_response(request, report=report, fmt=fmt)
