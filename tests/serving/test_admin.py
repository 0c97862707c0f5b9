"""Servers and deployments in the tenant's admin: readable by staff roles, never editable, never the secret."""

import pytest

from apps.serving.models import ModelServer
from apps.serving.services import deployment_create
from tests.helpers import otp_login
from tests.serving.conftest import make_model

SECRET = "Bearer admin-must-not-show-9d1e"


@pytest.mark.parametrize("member", ["alice", "olivia"])
def test_staff_read_servers_and_deployments_without_the_auth_header(client_a, cast, make_server, in_tenant_a, member):
    server = make_server(
        replica_urls=["http://10.0.0.1:8000"], auth_header_name="Authorization", auth_header_value=SECRET
    )
    deployment = deployment_create(
        actor=cast.alice, model=make_model("fraud", aliases={"champion": 1}), server=server, alias="champion"
    )
    encrypted = ModelServer.objects.get().auth_header_value_encrypted
    otp_login(client_a, getattr(cast, member))
    pages = [
        client_a.get("/admin/serving/modelserver/"),
        client_a.get(f"/admin/serving/modelserver/{server.pk}/change/"),
        client_a.get("/admin/serving/deployment/"),
        client_a.get(f"/admin/serving/deployment/{deployment.pk}/change/"),
    ]
    assert [page.status_code for page in pages] == [200, 200, 200, 200]
    server_page = pages[1].content.decode()
    assert "http://10.0.0.1:8000" in server_page
    assert "pool.a100" in server_page
    for page in pages:
        text = page.content.decode()
        assert SECRET not in text
        assert encrypted not in text
        assert "auth_header_value" not in text
    assert client_a.get("/admin/serving/modelserver/add/").status_code == 403
    assert client_a.post(f"/admin/serving/modelserver/{server.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ModelServer.objects.filter(pk=server.pk).exists()
