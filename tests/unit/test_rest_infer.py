"""Which paths the plain-ASGI inference front answers (everything else goes to Starlette)."""

from __future__ import annotations

import pytest

from gateway.rest.infer import infer_target


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/v2/models/mlp/infer", ("mlp", "")),
        ("/v2/models/mlp/versions/3/infer", ("mlp", "3")),
        ("/v2/models/a.b-c_d/versions/12/infer", ("a.b-c_d", "12")),
        ("/v2/models//infer", None),
        ("/v2/models/mlp/versions//infer", None),
        ("/v2/models/mlp/infer/", None),
        ("/v2/models/mlp/ready", None),
        ("/v2/models/mlp/versions/3/ready", None),
        ("/v1/models/mlp/infer", None),
        ("/v2/repository/mlp/infer", None),
        ("/v2/models/mlp/versions/3/extra/infer", None),
    ],
)
def test_infer_target(path: str, target: tuple[str, str] | None) -> None:
    assert infer_target(path) == target
