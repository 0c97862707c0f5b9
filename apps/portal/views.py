"""The browser portal for product teams: thin views over the accounts services and selectors."""

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.views.decorators.http import require_POST

from apps.accounts import services
from apps.accounts.selectors import member_counts, member_get, member_list, user_role
from apps.portal.forms import InviteForm, RoleForm


class LoginView(auth_views.LoginView):
    template_name = "portal/login.html"
    redirect_authenticated_user = True


class InvitationAcceptView(auth_views.PasswordResetConfirmView):
    """An invitation is a one-time link to set the first password (Django's reset-token machinery)."""

    template_name = "portal/invitation_accept.html"
    success_url = reverse_lazy("login")
    post_reset_login = False

    def form_valid(self, form):
        messages.success(self.request, "Your password is set. You can log in now.")
        return super().form_valid(form)


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    context = {"counts": member_counts(), "role": user_role(request.user)}
    return render(request, "portal/dashboard.html", context)


@login_required
@permission_required("accounts.view_user", raise_exception=True)
def members(request: HttpRequest) -> HttpResponse:
    rows = [(member, user_role(member)) for member in member_list()]
    can_manage = request.user.has_perm("accounts.manage_members")
    form = InviteForm(request.POST or None) if can_manage else None
    if request.method == "POST":
        if not can_manage:
            return render(request, "403.html", status=403)
        if form.is_valid():
            try:
                member = services.member_invite(actor=request.user, **form.cleaned_data)
            except ValidationError as error:
                form.add_error("email", error)
            else:
                link = request.build_absolute_uri(services.invitation_accept_path(member))
                messages.success(request, f"Invited {member.email}. Invitation link (also emailed): {link}")
                return redirect("members")
    context = {"rows": rows, "form": form, "can_manage": can_manage, "role_form": RoleForm()}
    return render(request, "portal/members.html", context, status=400 if form is not None and form.errors else 200)


@require_POST
@login_required
@permission_required("accounts.manage_members", raise_exception=True)
def member_role(request: HttpRequest, member_id: int) -> HttpResponse:
    member = member_get(member_id=member_id)
    form = RoleForm(request.POST)
    if form.is_valid():
        _apply(
            request,
            lambda: services.member_change_role(actor=request.user, member=member, **form.cleaned_data),
            f"{member.email} is now {form.cleaned_data['role'].replace('_', ' ')}.",
        )
    else:
        messages.error(request, "Choose a valid role.")
    return redirect("members")


@require_POST
@login_required
@permission_required("accounts.manage_members", raise_exception=True)
def member_active(request: HttpRequest, member_id: int) -> HttpResponse:
    member = member_get(member_id=member_id)
    active = request.POST.get("active") == "1"
    _apply(
        request,
        lambda: services.member_set_active(actor=request.user, member=member, active=active),
        f"{member.email} is {'reactivated' if active else 'deactivated'}.",
    )
    return redirect("members")


def _apply(request: HttpRequest, action, success: str) -> None:
    try:
        action()
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, success)
