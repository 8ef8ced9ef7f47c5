"""PICPIK signatures: the published test vector and the rendering rules' edge cases."""

from __future__ import annotations

import hashlib

import pytest

from server.picpik.signature import render, sign, string_to_sign, verify


def test_published_example() -> None:
    request = {"Action": "ListModels", "PublicKey": "abcdefg"}
    assert string_to_sign(request, "123456") == "ActionListModelsPublicKeyabcdefg123456"
    assert sign(request, "123456") == "4a20bc1141494035f6aaaad13224c94c5a8bc3a5"


def test_signature_field_is_excluded_and_verified() -> None:
    request = {"Action": "ListModels", "PublicKey": "abcdefg"}
    signed = {**request, "Signature": sign(request, "123456")}
    assert verify(signed, "123456")
    assert not verify(signed, "654321")
    assert not verify({**signed, "PublicKey": "other"}, "123456")
    assert not verify(request, "123456")  # no Signature at all


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        (True, "true"),
        (False, "false"),
        (42.0, "42"),
        (-3.0, "-3"),
        (0.5, "0.5"),
        (1e-05, "0.00001"),
        (1e20, "100000000000000000000"),
        (7, "7"),
        (None, ""),
        ("", ""),
        ("text", "text"),
        ([1, "a", True, 2.0], "1atrue2"),
        ({"b": 1, "a": {"d": False, "c": [0.25]}}, "ac0.25dfalseb1"),
        ([{"y": 1, "x": 2}, []], "x2y1"),
    ],
)
def test_render(value: object, rendered: str) -> None:
    assert render(value) == rendered


def test_lowercase_request_uuid_sorts_after_capitalised_keys() -> None:
    request = {"request_uuid": "u-1", "Seed": 5, "Action": "GenerateImages", "Width": 512.0}
    expected = "ActionGenerateImagesSeed5Width512request_uuidu-1" + "key"
    assert string_to_sign(request, "key") == expected
    assert sign(request, "key") == hashlib.sha1(expected.encode()).hexdigest()


def test_nested_generation_request() -> None:
    request = {
        "Action": "GenerateImages",
        "MainModel": {"ModelCode": "PICPIK Anime", "InferenceParams": {"Steps": 10}},
        "PositivePrompts": ["a cat", "on the sofa"],
        "NegativePrompts": [],
        "TranslatePrompts": True,
        "UseMainModelVAE": None,
    }
    assert string_to_sign(request, "K") == (
        "ActionGenerateImages"
        "MainModelInferenceParamsSteps10ModelCodePICPIK Anime"
        "NegativePrompts"
        "PositivePromptsa caton the sofa"
        "TranslatePromptstrue"
        "UseMainModelVAE"
        "K"
    )
