"""The portal's pages on the inference path: the playground that calls a model, and the tenant's request log.

The playground never calls a model itself: the page's script posts to the predict API with the member's session,
so the answer, the refusal and the compliance record are exactly what an API client gets. Without the script the
page still shows the body and the equivalent curl command. The request log shows the inference record, which
holds hashes and metadata only: no page here ever has a payload to show.
"""

from urllib.parse import urlencode

from django import forms
from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from apps.compliance import selectors as compliance_selectors
from apps.compliance.models import InferenceRecord
from apps.portal.playground import body_text, example_body, example_hint, shell_quote
from apps.registry import selectors as registry_selectors
from apps.registry.models import ModelVersion, RegisteredModel

VIEW_MODELS = "registry.view_registeredmodel"
VIEW_RECORDS = "compliance.view_inferencerecord"
# The predict API's own rule for portal members: the roles that may hold keys may call models.
MAY_PREDICT = "apikeys.manage_own_keys"
DEFAULT_ALIAS = "champion"
PREDICT_PATH = "/api/v1/models/{name}/predict"
PAGE_SIZE = 50
DATETIME_LOCAL_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M"]


# --- playground ------------------------------------------------------------------------------------------------


class PlaygroundForm(forms.Form):
    """Which model to call, and through which alias or version; a GET form, so every choice is a plain link."""

    model = forms.ChoiceField(choices=())
    alias = forms.CharField(
        max_length=63,
        required=False,
        widget=forms.TextInput(attrs={"list": "alias-names", "placeholder": DEFAULT_ALIAS}),
        help_text=f"Empty: {DEFAULT_ALIAS}.",
    )
    version = forms.TypedChoiceField(coerce=int, required=False, empty_value=None, label="or version")

    def __init__(self, *args, models: list[RegisteredModel], versions: list[ModelVersion], **kwargs) -> None:
        kwargs.setdefault("auto_id", "playground_%s")
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [(model.name, model.name) for model in models]
        ready = [version for version in versions if version.status == ModelVersion.Status.READY]
        self.fields["version"].choices = [("", "— the alias's —")] + [
            (version.version, f"v{version.version}") for version in ready
        ]

    def clean_alias(self) -> str:
        return self.cleaned_data["alias"].strip() or DEFAULT_ALIAS


@login_required
@permission_required(VIEW_MODELS, raise_exception=True)
@require_GET
def playground(request: HttpRequest) -> HttpResponse:
    """A body prefilled from the chosen version's signature; owners and developers may send it from here.

    Everyone who may see the models sees the page (what a call looks like is no secret from them), but only the
    roles that may hold keys get the Send button: the predict API would refuse anyone else anyway.
    """
    models = list(registry_selectors.model_list())
    by_name = {model.name: model for model in models}
    data = {"model": models[0].name if models else "", "alias": DEFAULT_ALIAS, **request.GET.dict()}
    model = by_name.get(data["model"])
    versions = list(registry_selectors.version_list(model=model)) if model else []
    form = PlaygroundForm(data, models=models, versions=versions)
    context = {
        "form": form,
        "models": models,
        "model": model,
        "can_predict": request.user.has_perm(MAY_PREDICT),
        "can_view_records": request.user.has_perm(VIEW_RECORDS),
    }
    if model is not None and form.is_valid():
        context |= _call(request, model, versions, form.cleaned_data["alias"], form.cleaned_data["version"])
    return render(request, "portal/playground.html", context)


def _call(request: HttpRequest, model: RegisteredModel, versions: list[ModelVersion], alias: str, number: int | None):
    """What the page shows for one choice: the version that will answer, the body, the URL, the curl command."""
    missing = ""
    if number is not None:
        target = next((version for version in versions if version.version == number), None)
        query = {"version": number}
    else:
        target = next((pointer.version for pointer in model.aliases.all() if pointer.alias == alias), None)
        query = {"alias": alias}
        if target is None:
            missing = f"{model.name}@{alias} is not set: promote a version to it, or choose a version."
    signature = target.signature if target else None
    text = body_text(example_body(signature))
    url = request.build_absolute_uri(PREDICT_PATH.format(name=model.name) + "?" + urlencode(query))
    return {
        "target": target,
        "body": text,
        "hint": missing or example_hint(signature),
        "predict_url": url,
        "curl_head": f"curl -sS -X POST {shell_quote(url)} \\\n"
        '  -H "Authorization: Bearer $API_KEY" \\\n'
        "  -H 'Content-Type: application/json' \\\n"
        "  -d ",
        "curl_body": shell_quote(text),
        "alias_names": [pointer.alias for pointer in model.aliases.all()],
    }


# --- request log -----------------------------------------------------------------------------------------------


class RecordFilterForm(forms.Form):
    """The request log's filters; every field is optional and a bad value is a form error, never a 500."""

    model = forms.CharField(max_length=63, required=False)
    version = forms.IntegerField(min_value=1, max_value=2**31 - 1, required=False)
    key_prefix = forms.CharField(max_length=32, required=False, label="Key prefix")
    status = forms.ChoiceField(choices=[("", "any"), *InferenceRecord.Status.choices], required=False)
    received_from = forms.DateTimeField(
        required=False,
        input_formats=DATETIME_LOCAL_FORMATS,
        label="Received from (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    received_to = forms.DateTimeField(
        required=False,
        input_formats=DATETIME_LOCAL_FORMATS,
        label="before (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("auto_id", "filter_%s")
        super().__init__(*args, **kwargs)

    def clean(self) -> dict:
        cleaned = super().clean()
        start, end = cleaned.get("received_from"), cleaned.get("received_to")
        if start and end and start >= end:
            self.add_error("received_to", "Must be later than the start of the range.")
        return cleaned

    def filters(self) -> dict:
        """The keyword arguments of `record_list`."""
        data = self.cleaned_data
        return {
            "model_name": data["model"].strip() or None,
            "model_version": data["version"],
            "key_prefix": data["key_prefix"].strip() or None,
            "status": data["status"] or None,
            "received_from": data["received_from"],
            "received_to": data["received_to"],
        }


@login_required
@permission_required(VIEW_RECORDS, raise_exception=True)
@require_GET
def request_log(request: HttpRequest) -> HttpResponse:
    """The tenant's inference records, newest first, 50 a page; the filters travel in the query string."""
    form = RecordFilterForm(request.GET)
    page = None
    if form.is_valid():
        records = compliance_selectors.record_list(**form.filters())
        page = Paginator(records, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "portal/requests.html", {"form": form, "page": page})


@login_required
@permission_required(VIEW_RECORDS, raise_exception=True)
@require_GET
def request_detail(request: HttpRequest, request_id: str) -> HttpResponse:
    """One record in full, with its place in the tenant's hash chain."""
    record = compliance_selectors.record_get(request_id=request_id)
    return render(request, "portal/request_detail.html", {"record": record})
