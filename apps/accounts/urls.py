from django.urls import path

from apps.accounts import views

urlpatterns = [
    path("", views.two_factor_enrol, name="two_factor_enrol"),
    path("verify/", views.two_factor_verify, name="two_factor_verify"),
    path("recovery-codes/", views.recovery_codes_regenerate, name="two_factor_recovery_codes"),
]
