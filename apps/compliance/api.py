"""/api/v1/reports: request compliance reports, follow their progress, read and download them.

Keys need the scope `reports:read` for every operation, requesting a report included: a report only reads
the record, and the audit log names who asked for it. Whoever calls, key or browser session, must be an owner
or compliance officer (a key acts for its owner), and a staff session must have passed its second factor.
"""

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response

from apps.accounts.roles import STAFF_ROLES
from apps.accounts.two_factor import SecondFactorVerified
from apps.api.errors import ApiError
from apps.apikeys.authentication import KeyPrincipal
from apps.apikeys.permissions import HasScopes
from apps.compliance import selectors, services
from apps.compliance.models import ComplianceReport
from apps.compliance.report_pages import report_download_response


class MayReadReports(BasePermission):
    """Owners and compliance officers; for a key, its owner's role (the scope is HasScopes' business)."""

    message = "Only owners and compliance officers may read compliance reports."

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, KeyPrincipal):
            return request.auth.owner_role in STAFF_ROLES
        return selectors.report_readers_allowed(request.user)


class ReportOutput(serializers.ModelSerializer):
    requested_by = serializers.EmailField(source="requested_by.email", read_only=True, default=None)
    url = serializers.SerializerMethodField()

    class Meta:
        model = ComplianceReport
        fields = [
            "id", "url", "status", "progress", "period_start", "period_end", "model_name", "key_prefix",
            "requested_by", "created", "finished", "content_sha256", "error",
        ]  # fmt: skip

    def get_url(self, report: ComplianceReport) -> str:
        return reverse("api-report", kwargs={"report_id": report.pk})


class ReportDetailOutput(ReportOutput):
    content = serializers.JSONField(
        read_only=True,
        help_text=(
            "The report as data; null until it is done. The input hashes are listed in the download only: here"
            " `data` has their count and SHA-256."
        ),
    )

    class Meta(ReportOutput.Meta):
        fields = [*ReportOutput.Meta.fields, "content"]


class ReportInput(serializers.Serializer):
    start = serializers.DateTimeField(help_text="Inclusive; a date-time with its offset, e.g. 2025-03-01T00:00:00Z")
    end = serializers.DateTimeField(help_text="Exclusive")
    model_name = serializers.CharField(max_length=63, required=False, allow_blank=True, default="")
    key_prefix = serializers.CharField(max_length=32, required=False, allow_blank=True, default="")


class _ReportView(GenericAPIView):
    permission_classes = [IsAuthenticated, HasScopes, SecondFactorVerified, MayReadReports]
    required_scopes = ("reports:read",)


class ReportsView(_ReportView):
    serializer_class = ReportOutput

    @extend_schema(operation_id="reports_list", responses=ReportOutput(many=True))
    def get(self, request):
        page = self.paginate_queryset(selectors.report_list())
        return self.get_paginated_response(ReportOutput(page, many=True).data)

    @extend_schema(request=ReportInput, responses={202: ReportOutput})
    def post(self, request):
        data = ReportInput(data=request.data)
        data.is_valid(raise_exception=True)
        report = services.report_request(actor=request.user, **data.validated_data)
        body = ReportOutput(report).data
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


class ReportDetailView(_ReportView):
    serializer_class = ReportDetailOutput

    def get(self, request, report_id: int):
        return Response(ReportDetailOutput(selectors.report_get(report_id=report_id)).data)


class _FormatIsOurs(DefaultContentNegotiation):
    """`?format=` names the download's format here, not one of DRF's renderers (errors stay JSON)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ReportDownloadView(_ReportView):
    FORMATS = ("csv", "json", "html")
    content_negotiation_class = _FormatIsOurs

    @extend_schema(
        parameters=[OpenApiParameter("format", enum=FORMATS, default="json")],
        responses={(200, "text/csv"): bytes, (200, "application/json"): bytes, (200, "text/html"): bytes},
    )
    def get(self, request, report_id: int):
        report = selectors.report_get(report_id=report_id)
        fmt = request.query_params.get("format", "json")
        if fmt not in self.FORMATS:
            raise ApiError("format must be csv, json or html.", code="invalid_format", status_code=400)
        if report.status != ComplianceReport.Status.DONE:
            raise ApiError(f"The report is {report.status}, not done.", code="report_not_ready", status_code=409)
        return report_download_response(request._request, report=report, fmt=fmt)
