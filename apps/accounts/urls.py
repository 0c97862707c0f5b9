"""The second-factor pages, on every host; resetting a member's second factor, in a tenant's portal only."""

from django.urls import path

from apps.accounts import views

# The public host serves these too: platform staff enrol and verify there before its admin opens.
second_factor_patterns = [
    path("", views.two_factor_enrol, name="two_factor_enrol"),
    path("verify/", views.two_factor_verify, name="two_factor_verify"),
    path("recovery-codes/", views.recovery_codes_regenerate, name="two_factor_recovery_codes"),
]

urlpatterns = [
    *second_factor_patterns,
    path("members/<int:member_id>/reset/", views.member_second_factor_reset, name="member_two_factor_reset"),
]
