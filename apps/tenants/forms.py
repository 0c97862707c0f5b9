from django import forms
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError

from apps.tenants.models import Tenant
from apps.tenants.services import tenant_slug_validate


class SignupForm(forms.Form):
    name = forms.CharField(label="Organisation name", max_length=100)
    slug = forms.CharField(
        label="Portal address",
        max_length=30,
        help_text="Lowercase letters and digits; your portal lives at <slug>.<domain>.",
    )
    plan = forms.ChoiceField(choices=Tenant.Plan.choices, initial=Tenant.Plan.FREE)
    email = forms.EmailField(label="Your email")
    password = forms.CharField(widget=forms.PasswordInput, label="Password")

    def clean_slug(self) -> str:
        slug = self.cleaned_data["slug"].strip().lower()
        tenant_slug_validate(slug)
        return slug

    def clean(self) -> dict:
        cleaned = super().clean()
        password = cleaned.get("password")
        if password:
            try:
                validate_password(password)
            except ValidationError as error:
                self.add_error("password", error)
        return cleaned
