from django.contrib.auth import views as auth_views
from django.urls import path

from apps.portal import keys, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("members/", views.members, name="members"),
    path("members/<int:member_id>/role/", views.member_role, name="member_role"),
    path("members/<int:member_id>/active/", views.member_active, name="member_active"),
    path("keys/", keys.keys, name="keys"),
    path("keys/<int:key_id>/rotate/", keys.key_rotate, name="key_rotate"),
    path("keys/<int:key_id>/revoke/", keys.key_revoke, name="key_revoke"),
    path("invitation/<uidb64>/<token>/", views.InvitationAcceptView.as_view(), name="invitation_accept"),
]
