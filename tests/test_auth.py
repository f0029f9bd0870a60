"""TokenAuthority: which tokens are accepted, why others are refused, and refresh."""

from __future__ import annotations

import base64
from typing import Any

import jwt
import orjson
import pytest

from syncbridge.auth import Claims, TokenAuthority
from syncbridge.errors import AuthenticationError

SECRET = "auth-test-secret-that-is-at-least-32-bytes"
NOW = 1_700_000_000
IDENTITY = {"user_id": "u1", "device_id": "d1", "session_id": "s1"}


def sign(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def claims(**extra: Any) -> dict[str, Any]:
    return {**IDENTITY, "exp": NOW + 60, **extra}


def refused(token: Any, reason: str, authority: TokenAuthority | None = None) -> str:
    with pytest.raises(AuthenticationError) as info:
        (authority or TokenAuthority(SECRET)).verify(token, now=NOW)
    assert info.value.reason == reason
    assert info.value.message == str(info.value)
    return info.value.message


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


def test_auth_verify_ok_returns_claims() -> None:
    token = sign(claims(iat=NOW - 5, email="a@example.com", roles=["admin", "ops"]))
    assert TokenAuthority(SECRET).verify(token, now=NOW) == Claims(
        user_id="u1",
        device_id="d1",
        session_id="s1",
        expires_at=NOW + 60,
        issued_at=NOW - 5,
        email="a@example.com",
        roles=("admin", "ops"),
    )


def test_auth_verify_minimal_token_defaults() -> None:
    got = TokenAuthority(SECRET).verify(sign(claims()), now=NOW)
    assert got.issued_at is None
    assert got.email is None
    assert got.roles == ()
    assert got.is_admin is False


def test_auth_verify_float_exp_refused() -> None:
    # Whole seconds only (issue 12, item 5): every time downstream is an exact int.
    refused(sign(claims(exp=NOW + 1.5)), "claim_range")


def test_auth_verify_expired() -> None:
    message = refused(sign(claims(exp=NOW - 1)), "expired")
    assert str(NOW - 1) in message


def test_auth_verify_expires_exactly_now() -> None:
    refused(sign(claims(exp=NOW)), "expired")


def test_auth_verify_leeway_accepts_recently_expired() -> None:
    token = sign(claims(exp=NOW - 5))
    assert TokenAuthority(SECRET, leeway=10).verify(token, now=NOW).user_id == "u1"
    refused(token, "expired", TokenAuthority(SECRET, leeway=2))


def test_auth_verify_expiry_uses_callers_now() -> None:
    token = sign(claims(exp=NOW + 60))
    authority = TokenAuthority(SECRET)
    assert authority.verify(token, now=NOW + 59).session_id == "s1"
    with pytest.raises(AuthenticationError):
        authority.verify(token, now=NOW + 60)


def test_auth_verify_bad_signature() -> None:
    refused(sign(claims(), secret="another-secret-that-is-also-32-bytes-long"), "signature")


def test_auth_verify_tampered_payload() -> None:
    header, _payload, signature = sign(claims()).split(".")
    forged = f"{header}.{b64(claims(session_id='someone-else'))}.{signature}"
    refused(forged, "signature")


@pytest.mark.parametrize("token", ["abc", "abc.def", "a.b.c", "not a token at all", "..."])
def test_auth_verify_malformed(token: str) -> None:
    refused(token, "malformed")


def test_auth_verify_empty_token() -> None:
    refused("", "missing")


def test_auth_verify_null_token() -> None:
    refused(None, "missing")


@pytest.mark.parametrize("token", [123, ["a.b.c"], {"token": "x"}, True])
def test_auth_verify_non_string_token(token: Any) -> None:
    refused(token, "malformed")


def test_auth_verify_missing_exp() -> None:
    assert "exp" in refused(sign(IDENTITY), "claims")


@pytest.mark.parametrize("exp", ["soon", True, [1]])
def test_auth_verify_exp_not_a_number(exp: Any) -> None:
    refused(sign(claims(exp=exp)), "claim_range")


def test_auth_verify_null_exp_is_missing() -> None:
    assert "exp" in refused(sign(claims(exp=None)), "claims")


@pytest.mark.parametrize("field", ["user_id", "device_id", "session_id"])
@pytest.mark.parametrize("value", ["missing", "", 5, None, ["u"], "x" * 257])
def test_auth_verify_identity_claim_invalid(field: str, value: Any) -> None:
    payload = claims()
    if value == "missing":
        del payload[field]
    else:
        payload[field] = value
    assert field in refused(sign(payload), "claims")


def test_auth_verify_identity_claim_at_length_limit() -> None:
    got = TokenAuthority(SECRET).verify(sign(claims(device_id="d" * 256)), now=NOW)
    assert got.device_id == "d" * 256


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (["admin"], ("admin",)),
        ("admin", ("admin",)),
        ([], ()),
        (None, ()),
        (["a", "b"], ("a", "b")),
    ],
)
def test_auth_verify_roles_accepted(roles: Any, expected: tuple[str, ...]) -> None:
    got = TokenAuthority(SECRET).verify(sign(claims(roles=roles)), now=NOW)
    assert got.roles == expected
    assert got.is_admin is ("admin" in expected)


@pytest.mark.parametrize("roles", [[1], ["admin", None], {"admin": True}, 5, [["admin"]]])
def test_auth_verify_roles_invalid(roles: Any) -> None:
    assert "roles" in refused(sign(claims(roles=roles)), "claims")


def test_auth_verify_non_string_email_ignored() -> None:
    assert TokenAuthority(SECRET).verify(sign(claims(email=5)), now=NOW).email is None


def test_auth_verify_alg_none_refused() -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert unsigned.endswith(".")
    refused(unsigned, "invalid")


def test_auth_verify_alg_none_with_hs256_signature_refused() -> None:
    # A header claiming "none" must not be trusted even if a valid HS256 signature is attached.
    _header, payload, signature = sign(claims()).split(".")
    refused(f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.{signature}", "invalid")


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_auth_verify_other_algorithm_refused(algorithm: str) -> None:
    refused(sign(claims(), secret=SECRET * 2, algorithm=algorithm), "invalid")


def test_auth_mint_verifies_to_same_identity() -> None:
    authority = TokenAuthority(SECRET)
    token, expires_at = authority.mint(
        user_id="u9", device_id="d9", session_id="s9", ttl=300, now=NOW + 0.7
    )
    assert expires_at == NOW + 300
    got = authority.verify(token, now=NOW)
    assert (got.user_id, got.device_id, got.session_id) == ("u9", "d9", "s9")
    assert got.expires_at == expires_at
    assert got.issued_at == NOW
    assert got.roles == ()
    assert got.email is None
    raw = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert "roles" not in raw
    assert "email" not in raw
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_auth_mint_roles_and_email() -> None:
    authority = TokenAuthority(SECRET)
    token, _ = authority.mint(
        user_id="u", device_id="d", session_id="s", ttl=60, now=NOW, roles=("admin",), email="e@x"
    )
    got = authority.verify(token, now=NOW)
    assert got.roles == ("admin",)
    assert got.is_admin
    assert got.email == "e@x"


def test_auth_mint_same_second_tokens_differ() -> None:
    authority = TokenAuthority(SECRET)
    tokens = {
        authority.mint(user_id="u", device_id="d", session_id="s", ttl=60, now=NOW)[0]
        for _ in range(5)
    }
    assert len(tokens) == 5


def test_auth_refresh_new_token_same_identity() -> None:
    authority = TokenAuthority(SECRET)
    presented = sign(claims(roles=["admin"], email="a@b", jti="first"))
    old = authority.verify(presented, now=NOW)
    new_token, expires_at = authority.refresh(old, ttl=3600, now=NOW)
    assert new_token != presented
    assert expires_at == NOW + 3600
    new = authority.verify(new_token, now=NOW)
    assert (new.user_id, new.device_id, new.session_id) == ("u1", "d1", "s1")
    assert new.roles == ("admin",)
    assert new.email == "a@b"
    assert new.expires_at == expires_at
    raw = jwt.decode(new_token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    new_jti = raw["jti"]
    assert new_jti != "first"
    again, _ = authority.refresh(new, ttl=3600, now=NOW)
    assert again != new_token


# --- hostile claims in correctly signed tokens (issue 12, item 5) -------------------------


def sign_raw(payload_json: str) -> str:
    """A correctly signed HS256 token whose payload is exactly ``payload_json``
    (JSON that pyjwt's encoder would not produce: NaN, Infinity, 1e400, lone surrogates)."""
    header = b64({"alg": "HS256", "typ": "JWT"})
    payload = base64.urlsafe_b64encode(payload_json.encode()).rstrip(b"=").decode()
    signing_input = f"{header}.{payload}".encode()
    signature = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(
        signing_input, SECRET.encode()
    )
    return f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


IDS = '"user_id":"u1","device_id":"d1","session_id":"s1"'


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf", "auth_time"])
@pytest.mark.parametrize(
    "value", ["NaN", "Infinity", "-Infinity", "1e400", "1.5", "true", "-1", "1e20", '"1"']
)
def test_auth_verify_time_claims_must_be_whole_seconds_in_range(claim: str, value: str) -> None:
    exp = value if claim == "exp" else str(NOW + 60)
    other = "" if claim == "exp" else f',"{claim}":{value}'
    message = refused(sign_raw(f'{{{IDS},"exp":{exp}{other}}}'), "claim_range")
    assert claim in message


def test_auth_verify_time_claims_accept_integers() -> None:
    token = sign_raw(f'{{{IDS},"exp":{NOW + 60},"iat":{NOW},"nbf":{NOW},"auth_time":{NOW - 9}}}')
    got = TokenAuthority(SECRET).verify(token, now=NOW)
    assert (got.issued_at, got.auth_time, got.signed_in_at) == (NOW, NOW - 9, NOW - 9)


def test_auth_verify_not_before_in_the_future_refused() -> None:
    assert str(NOW + 5) in refused(sign(claims(nbf=NOW + 5)), "not_yet_valid")


@pytest.mark.parametrize("field", ["user_id", "device_id", "session_id"])
@pytest.mark.parametrize(
    "value", ["\\ud800", "a\\udfffb", "d\\u001fx", "d\\u0000", "tab\\tbed", "del\\u007f", "\\u0085"]
)
def test_auth_verify_ids_must_be_printable(field: str, value: str) -> None:
    # ``value`` is JSON text (escapes included), spliced in as the claim's string.
    ids = ",".join(
        f'"{name}":"{value if name == field else original}"' for name, original in IDENTITY.items()
    )
    message = refused(sign_raw(f'{{{ids},"exp":{NOW + 60}}}'), "claim_chars")
    assert field in message


def test_auth_verify_printable_unicode_ids_accepted() -> None:
    got = TokenAuthority(SECRET).verify(sign(claims(device_id="Alice's phone 📱 é")), now=NOW)
    assert got.device_id == "Alice's phone 📱 é"


@pytest.mark.parametrize("roles", [["a\u0000"], ["x" * 65], ["r"] * 33, [""]])
def test_auth_verify_roles_bounded_and_printable(roles: Any) -> None:
    refused(sign(claims(roles=roles)), "claim_chars")


def test_auth_verify_unprintable_email_dropped() -> None:
    token = sign_raw(f'{{{IDS},"exp":{NOW + 60},"email":"\\ud800"}}')
    got = TokenAuthority(SECRET).verify(token, now=NOW)
    assert got.email is None


# --- renewal bounded by the original sign-in (issue 12, item 6) ----------------------------


def test_auth_refresh_caps_expiry_at_max_lifetime_and_carries_auth_time() -> None:
    authority = TokenAuthority(SECRET)
    first = authority.verify(sign(claims(iat=NOW - 100)), now=NOW)
    token, expires_at = authority.refresh(first, ttl=3600, now=NOW, max_lifetime=1000) or ("", 0)
    assert expires_at == NOW - 100 + 1000  # capped: 900 s left, not 3600
    renewed = authority.verify(token, now=NOW)
    assert (renewed.auth_time, renewed.issued_at) == (NOW - 100, NOW)
    # Renewing the renewed token keeps the original sign-in, so the cap holds.
    again = authority.refresh(renewed, ttl=3600, now=NOW + 800, max_lifetime=1000)
    assert again is not None
    assert again[1] == NOW + 900
    assert authority.refresh(renewed, ttl=3600, now=NOW + 900, max_lifetime=1000) is None


def test_auth_refresh_without_iat_starts_the_lifetime_now() -> None:
    authority = TokenAuthority(SECRET)
    bare = authority.verify(sign(claims()), now=NOW)
    token, expires_at = authority.refresh(bare, ttl=60, now=NOW, max_lifetime=1000) or ("", 0)
    assert expires_at == NOW + 60
    assert authority.verify(token, now=NOW).auth_time == NOW


def test_auth_claims_operator_roles() -> None:
    def with_roles(*roles: str) -> Claims:
        return Claims(user_id="u", device_id="d", session_id="s", expires_at=NOW, roles=roles)

    assert [with_roles(r).is_operator for r in ("admin", "metrics", "service", "user")] == [
        True,
        True,
        True,
        False,
    ]
    assert not with_roles().is_operator
