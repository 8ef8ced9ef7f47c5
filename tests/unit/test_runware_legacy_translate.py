"""The legacy (picfinder) protocol's translation: tables, newTask -> imageInference, the utility
messages, replies and error frames. Pure functions: no server, no engine."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from pipelines.samplers import is_known_sampler
from server.runware import protocol as wire
from server.runware.legacy.tables import (
    CONTROLNET_TYPES,
    INFERENCE_TASK_TYPES,
    LANGUAGES,
    LEGACY_MODEL_IDS,
    PREPROCESSORS,
    SCHEDULERS,
    SIZES,
    STYLES,
    TASK_TYPE_MESSAGES,
    TASK_TYPES,
)
from server.runware.legacy.translate import (
    CURRENT_ERROR_IDS,
    ErrorId,
    Kind,
    LegacyError,
    LegacyTask,
    NewConnection,
    Ping,
    apply_style,
    error_frame,
    error_frame_from_current,
    inference_items_to_new_images,
    invalid_api_key_frame,
    legacy_reply,
    new_image_upload_to_task,
    new_task_to_inference,
    parse_message,
    pong_reply,
    preprocess_reply,
    preprocess_to_task,
    prompt_enhance_to_task,
    remove_background_to_task,
    reverse_clip_to_task,
    session_reply,
    split_negative,
    uploaded_image_reply,
    upscale_to_task,
)

ROOT = Path(__file__).resolve().parents[2]
UUID = "99e54383-551d-4029-9928-bc83177e26ea"
IMAGE = "87e9f0eb-ab36-4c17-95ca-4ae4ac48e383"
GUIDE = "ba45e405-6042-4796-896a-105c1ab72cf2"


def _task(**fields: Any) -> dict[str, Any]:
    """A minimal valid newTask body plus fields (None values are sent as null)."""
    return {"taskUUID": UUID, "promptText": "a house", "modelId": 13, **fields}


def _error(call: Any, *args: Any) -> LegacyError:
    with pytest.raises(LegacyError) as caught:
        call(*args)
    return caught.value


# --- tables -------------------------------------------------------------------------------------


def test_sizes_are_the_documented_ones_and_fit_the_current_protocol() -> None:
    assert dict(SIZES) == {
        1: (512, 512),
        2: (512, 768),
        3: (512, 1024),
        4: (768, 512),
        5: (1024, 512),
        6: (704, 512),
        7: (896, 512),
        8: (512, 896),
        9: (512, 704),
        11: (1024, 1024),
        16: (1344, 768),
        17: (768, 1344),
        20: (640, 960),
        21: (960, 640),
    }
    for width, height in SIZES.values():
        assert width % wire.SIDE_MULTIPLE == 0 and height % wire.SIDE_MULTIPLE == 0


def test_scheduler_ids_name_samplers_the_engine_has_or_say_why_not() -> None:
    assert sorted(SCHEDULERS) == list(range(1, 27))
    assert SCHEDULERS[1].name == "Default" and SCHEDULERS[22].name == "DPM++ 2M Karras"
    assert SCHEDULERS[17].name == "EulerDiscreteScheduler"
    unsupported = {n for n, s in SCHEDULERS.items() if s.unsupported}
    assert unsupported == {3, 11, 14, 15, 16, 19, 21}
    for scheduler in SCHEDULERS.values():
        # Supported names are ones pipelines/samplers.py knows; refused ones are not there.
        assert is_known_sampler(scheduler.name) is not bool(scheduler.unsupported), scheduler


def test_styles_are_the_twelve_documented_names_with_one_prompt_slot() -> None:
    assert [s.name for s in STYLES.values()] == [
        "No style",
        "Anime",
        "Photographic",
        "Digital Art",
        "Comic Book",
        "Fantasy Art",
        "Analog Film",
        "Neon Punk",
        "Isometric",
        "Low Poly",
        "Origami",
        "Line Art",
    ]
    assert sorted(STYLES) == list(range(1, 13))
    for style in STYLES.values():
        assert style.positive.count("{prompt}") == 1
    assert STYLES[1].positive == "{prompt}" and STYLES[1].negative == ""
    assert all(s.negative for n, s in STYLES.items() if n != 1)


def test_languages_are_the_documented_table() -> None:
    assert len(LANGUAGES) == 297
    assert set(LANGUAGES) == set(range(1, 299)) - {193}  # 193 is missing in the docs too
    assert LANGUAGES[1] == "English (GB)"
    assert LANGUAGES[34] == "French"
    assert LANGUAGES[194] == "English (US)"
    assert LANGUAGES[247] == "Norwegian Bokmål"
    assert LANGUAGES[298] == "Zhuang; Chuang"


def test_task_types_and_which_message_serves_each() -> None:
    assert sorted(TASK_TYPES) == list(range(1, 12))
    assert TASK_TYPES[1] == "Text to Image" and TASK_TYPES[10] == "ControlNet Image to Image"
    assert set(INFERENCE_TASK_TYPES) == {1, 2, 3, 9, 10}
    assert set(TASK_TYPE_MESSAGES) == set(TASK_TYPES) - set(INFERENCE_TASK_TYPES)
    for message in TASK_TYPE_MESSAGES.values():
        assert message in {k.value for k in Kind}


def test_legacy_model_ids_become_public_ids() -> None:
    assert {n: (m.public_id, m.name) for n, m in LEGACY_MODEL_IDS.items()} == {
        4: ("legacy:4", "SDXL v1.0"),
        13: ("legacy:13", "rev_animated v1.2.2"),
        18: ("legacy:18", "absolutereality v1.8.1"),
        19: ("legacy:19", "cyberrealistic v3.2"),
        20: ("legacy:20", "dreamshaper v7.0"),
        22: ("legacy:22", "ghostmix_v2.0 bakedvae"),
        25: ("legacy:25", "samaritan_3d_cartoon v3.0"),
    }


def _engine_preprocessor_codes() -> set[str]:
    """The keys of pipelines/preprocessors.py's PREPROCESSORS, read from the source (importing it
    loads torch, far too slow for this test)."""
    tree = ast.parse((ROOT / "pipelines" / "preprocessors.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "PREPROCESSORS"
            and isinstance(node.value, ast.Dict)
        ):
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    raise AssertionError("pipelines/preprocessors.py has no PREPROCESSORS dict")


def test_preprocessor_names_map_to_engine_codes_or_say_why_not() -> None:
    codes = _engine_preprocessor_codes()
    documented = """canny depth_leres depth_midas depth_zoe inpaint_global_harmonious lineart_anime
        lineart_coarse lineart_realistic lineart_standard mlsd normal_bae openpose openpose_face
        openpose_faceonly openpose_full openpose_hand scribble_hed scribble_pidinet seg_ofade20k
        seg_ofcoco seg_ufade20k shuffle softedge_hed softedge_hedsafe softedge_pidinet
        softedge_pidisafe tile_gaussian""".split()
    groups = "canny depth mlsd normalbae openpose tile seg lineart lineart_anime shuffle".split()
    groups += ["scribble", "softedge"]
    assert set(PREPROCESSORS) == set(documented) | set(groups) == CONTROLNET_TYPES
    for name, entry in PREPROCESSORS.items():
        if entry.code is None:
            assert entry.unsupported, name
        else:
            assert entry.code in codes, name
    unsupported = {n for n, e in PREPROCESSORS.items() if e.code is None}
    assert unsupported == {
        "inpaint_global_harmonious",
        "seg_ofade20k",
        "seg_ofcoco",
        "seg_ufade20k",
        "tile_gaussian",
        "seg",
        "tile",
    }


def test_group_names_agree_with_the_current_protocol_table() -> None:
    from server.runware import common

    for name, code in common.PREPROCESSORS.items():
        if name in PREPROCESSORS:
            assert PREPROCESSORS[name].code == code, name
    for name in common.UNSUPPORTED_PREPROCESSORS:
        assert PREPROCESSORS[name].code is None, name


def test_every_current_error_code_has_a_legacy_error_id() -> None:
    from server.runware.errors import Code

    assert {c.value for c in Code} == set(CURRENT_ERROR_IDS)
    assert CURRENT_ERROR_IDS["invalidApiKey"] is ErrorId.INVALID_API_KEY == 19


# --- prompts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "positive", "negative"),
    [
        ("a cat", "a cat", ""),
        ("a cat -no dog", "a cat", "dog"),
        ("a cat -no dog, blurry", "a cat", "dog, blurry"),
        ("a cat  -no  dog ", "a cat", "dog"),
        ("a cat -no dog -no rain", "a cat", "dog -no rain"),  # the first token splits
        ("a cat -no", "a cat", ""),
        ("-no dog", "", "dog"),  # the JS SDK's "${p} -no ${n}".trim() with p = ""
        ("a cat\n-no\tdog", "a cat", "dog"),
        ("a cat -nothing else", "a cat -nothing else", ""),
        ("a cat-no dog", "a cat-no dog", ""),
        ("a cat -NO dog", "a cat -NO dog", ""),
    ],
)
def test_split_negative(text: str, positive: str, negative: str) -> None:
    assert split_negative(text) == (positive, negative)


def test_apply_style() -> None:
    assert apply_style(STYLES[1], "a cat", "dog") == ("a cat", "dog")
    positive, negative = apply_style(STYLES[3], "a cat", "")
    assert positive == STYLES[3].positive.replace("{prompt}", "a cat")
    assert negative == STYLES[3].negative
    _, negative = apply_style(STYLES[3], "a cat", "dog")
    assert negative == f"dog, {STYLES[3].negative}"
    positive, _ = apply_style(STYLES[2], "a {weird} {prompt} cat", "")
    assert positive.startswith("anime artwork of a {weird} {prompt} cat, ")


# --- newTask ------------------------------------------------------------------------------------


def test_new_task_full_translation() -> None:
    task = _task(
        promptText="country house -no people",
        sizeId=11,
        taskType=1,
        numberResults=2,
        steps=30,
        gScale=6,
        seed=1234,
        schedulerId=17,
        clipSkip=1,
        styleId=1,
        promptLanguageId=1,
        useCache=True,
        saveToCache=False,
        offset=3,
        usePromptWeighting=True,
        checkNsfw=True,
        uploadEndpoint="https://bucket.example/put",
        lora=[{"modelId": "civitai:132942@146296", "weight": 0.7}],
    )
    assert new_task_to_inference(task) == {
        "taskType": "imageInference",
        "taskUUID": UUID,
        "positivePrompt": "country house",
        "negativePrompt": "people",
        "model": "legacy:13",
        "width": 1024,
        "height": 1024,
        "steps": 30,
        "CFGScale": 6,
        "numberResults": 2,
        "outputType": "URL",
        "promptLanguage": "en",  # promptLanguageId 1: English, taken as it is
        "seed": 1234,
        "scheduler": "EulerDiscreteScheduler",
        "clipSkip": 1,
        "lora": [{"model": "civitai:132942@146296", "weight": 0.7}],
        "promptWeighting": "compel",
        "checkNSFW": True,
        "uploadEndpoint": "https://bucket.example/put",
    }
    wire.parse(wire.ImageInference, new_task_to_inference(task))  # the current protocol takes it


def test_new_task_defaults() -> None:
    assert new_task_to_inference(_task()) == {
        "taskType": "imageInference",
        "taskUUID": UUID,
        "positivePrompt": "a house",
        "model": "legacy:13",
        "width": 512,
        "height": 512,
        "steps": 20,
        "CFGScale": 7.5,  # the legacy default, not the current protocol's 7
        "numberResults": 1,
        "outputType": "URL",
        "promptLanguage": "auto",  # no promptLanguageId: the language is detected
    }


@pytest.mark.parametrize(
    ("language_id", "expected"),
    [(23, "de"), (1, "en"), (194, "en"), (None, "auto"), (222, "auto")],  # 222: no ISO code
)
def test_prompt_language_id_becomes_prompt_language(language_id: int | None, expected: str) -> None:
    inference = new_task_to_inference(_task(promptLanguageId=language_id))
    assert inference["promptLanguage"] == expected
    wire.parse(wire.ImageInference, inference)


def test_null_and_ignored_fields_are_absent() -> None:
    plain = new_task_to_inference(_task())
    nulls = {
        k: None
        for k in (
            "seed",
            "steps",
            "gScale",
            "sizeId",
            "taskType",
            "schedulerId",
            "styleId",
            "clipSkip",
            "promptLanguageId",
            "lora",
            "controlNet",
            "imageInitiatorUUID",
            "imageMaskInitiatorUUID",
            "usePromptWeighting",
            "checkNsfw",
            "uploadEndpoint",
        )
    }
    assert new_task_to_inference(_task(**nulls)) == plain
    ignored = _task(useCache=True, saveToCache=True, offset=40, somethingNew={"x": 1})
    assert new_task_to_inference(ignored) == plain
    assert new_task_to_inference(_task(usePromptWeighting=False)) == plain


@pytest.mark.parametrize(
    ("model_id", "model"),
    [
        (13, "legacy:13"),
        ("13", "legacy:13"),  # the Go SDK sends modelId as a string
        (4.0, "legacy:4"),
        ("civitai:132942@146296", "civitai:132942@146296"),
        ("runware:100@1", "runware:100@1"),
        (" runware:100@1 ", "runware:100@1"),
    ],
)
def test_model_ids(model_id: Any, model: str) -> None:
    assert new_task_to_inference(_task(modelId=model_id))["model"] == model


def test_model_id_errors() -> None:
    error = _error(new_task_to_inference, _task(modelId=99))
    assert error.error_id is ErrorId.UNKNOWN_MODEL
    assert "99" in error.message and "13 (rev_animated v1.2.2)" in error.message
    assert error.task_uuid == UUID
    assert "modelId is required" in _error(new_task_to_inference, _task(modelId=None)).message
    assert "modelId" in _error(new_task_to_inference, _task(modelId=True)).message


def test_every_size_id() -> None:
    for size_id, (width, height) in SIZES.items():
        inference = new_task_to_inference(_task(sizeId=size_id))
        assert (inference["width"], inference["height"]) == (width, height)
    error = _error(new_task_to_inference, _task(sizeId=10))
    assert error.message.startswith("sizeId 10 is unknown; known ids: 1-9, 11, 16-17, 20-21")


def test_every_scheduler_id() -> None:
    for scheduler_id, scheduler in SCHEDULERS.items():
        if scheduler.unsupported:
            error = _error(new_task_to_inference, _task(schedulerId=scheduler_id))
            assert error.error_id is ErrorId.UNSUPPORTED
            assert scheduler.name in error.message and scheduler.unsupported in error.message
        else:
            inference = new_task_to_inference(_task(schedulerId=scheduler_id))
            assert inference["scheduler"] == scheduler.name
    assert (
        "schedulerId 27 is unknown" in _error(new_task_to_inference, _task(schedulerId=27)).message
    )


def test_every_style_id() -> None:
    for style_id, style in STYLES.items():
        inference = new_task_to_inference(_task(promptText="a cat -no dog", styleId=style_id))
        assert inference["positivePrompt"] == style.positive.replace("{prompt}", "a cat")
        assert inference["negativePrompt"] == ", ".join(p for p in ("dog", style.negative) if p)
    assert "styleId 13 is unknown" in _error(new_task_to_inference, _task(styleId=13)).message


def test_style_negative_without_a_client_negative() -> None:
    inference = new_task_to_inference(_task(styleId=12))
    assert inference["negativePrompt"] == STYLES[12].negative


def test_prompt_languages_are_checked_and_the_prompt_kept() -> None:
    for language in (1, 34, "34", 298):
        inference = new_task_to_inference(_task(promptLanguageId=language))
        assert inference["positivePrompt"] == "a house"
    for bad in (193, 299, 0, "french"):
        error = _error(new_task_to_inference, _task(promptLanguageId=bad))
        assert "promptLanguageId" in error.message and "1-192, 194-298" in error.message


def test_prompt_errors() -> None:
    assert "promptText is required" in _error(new_task_to_inference, _task(promptText="")).message
    assert "promptText is required" in _error(new_task_to_inference, _task(promptText=None)).message
    error = _error(new_task_to_inference, _task(promptText="-no dog"))
    assert "no positive prompt" in error.message
    assert "must be a string" in _error(new_task_to_inference, _task(promptText=5)).message


def test_seed_passes_through_for_every_image() -> None:
    """Legacy: image i uses seed + i. Current imageInference does the same from one seed, so
    the seed goes through unchanged and numberResults says how many images."""
    message = parse_message({"newTask": _task(seed=41, numberResults=3)})
    assert isinstance(message, LegacyTask)
    assert message.task["seed"] == 41 and message.task["numberResults"] == 3
    assert message.expected == 3
    assert new_task_to_inference(_task(seed=0))["seed"] == 0
    assert new_task_to_inference(_task(seed=2**63 - 1))["seed"] == 2**63 - 1
    for bad in (-1, 2**63, "12", 1.5, True):
        assert "seed" in _error(new_task_to_inference, _task(seed=bad)).message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", 0),
        ("steps", "20"),
        ("numberResults", 0),
        ("gScale", -1),
        ("gScale", True),
        ("gScale", "7"),
        ("clipSkip", 3),
        ("taskType", "1"),
        ("sizeId", 1.5),
        ("checkNsfw", "yes"),
        ("usePromptWeighting", 1),
        ("uploadEndpoint", 5),
        ("lora", {"modelId": "x"}),
        ("controlNet", ["canny"]),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: Any) -> None:
    error = _error(new_task_to_inference, _task(**{field: value}))
    assert error.message.startswith(field) and error.task_uuid == UUID
    assert error.error_id is ErrorId.INVALID_PARAMETER
    assert error.frame()["errorId"] == ErrorId.INVALID_PARAMETER


def test_integral_floats_count_as_integers() -> None:
    inference = new_task_to_inference(_task(steps=25.0, numberResults=2.0, sizeId=2.0))
    assert (inference["steps"], inference["numberResults"], inference["height"]) == (25, 2, 768)


def test_task_types_served_elsewhere_say_which_message_to_send() -> None:
    for task_type, message in TASK_TYPE_MESSAGES.items():
        error = _error(new_task_to_inference, _task(taskType=task_type))
        assert error.error_id is ErrorId.UNSUPPORTED
        assert message in error.message and TASK_TYPES[task_type] in error.message
    assert "taskType 12 is unknown" in _error(new_task_to_inference, _task(taskType=12)).message


def test_image_to_image() -> None:
    inference = new_task_to_inference(_task(taskType=2, imageInitiatorUUID=IMAGE))
    assert inference["seedImage"] == IMAGE and inference["strength"] == 0.8
    assert "maskImage" not in inference
    inference = new_task_to_inference(_task(taskType=2, imageInitiatorUUID=IMAGE, strength=0.35))
    assert inference["strength"] == 0.35
    wire.parse(wire.ImageInference, inference)
    error = _error(new_task_to_inference, _task(taskType=2))
    assert error.message.startswith("imageInitiatorUUID is required: taskType 2 (Image to Image)")
    error = _error(new_task_to_inference, _task(taskType=2, imageInitiatorUUID=IMAGE, strength=2))
    assert error.message.startswith("strength must be at most 1")


def test_images_a_task_type_does_not_take_are_refused() -> None:
    error = _error(new_task_to_inference, _task(taskType=1, imageInitiatorUUID=IMAGE))
    assert error.message == (
        "imageInitiatorUUID is not taken by taskType 1 (Text to Image); task types 2, 3, 10 take it"
    )
    error = _error(
        new_task_to_inference,
        _task(taskType=2, imageInitiatorUUID=IMAGE, imageMaskInitiatorUUID=GUIDE),
    )
    assert error.message.startswith("imageMaskInitiatorUUID is not taken by taskType 2")
    assert "task types 3, 10 take it" in error.message
    error = _error(new_task_to_inference, _task(strength=0.5))
    assert error.message.startswith("strength needs an imageInitiatorUUID")
    # "" is how the Go SDK leaves a field unset.
    assert "seedImage" not in new_task_to_inference(_task(imageInitiatorUUID=""))


def test_inpainting() -> None:
    inference = new_task_to_inference(
        _task(taskType=3, imageInitiatorUUID=IMAGE, imageMaskInitiatorUUID=GUIDE)
    )
    assert (inference["seedImage"], inference["maskImage"], inference["strength"]) == (
        IMAGE,
        GUIDE,
        0.8,
    )
    wire.parse(wire.ImageInference, inference)
    error = _error(new_task_to_inference, _task(taskType=3, imageInitiatorUUID=IMAGE))
    assert error.message.startswith("imageMaskInitiatorUUID is required: taskType 3 (Inpainting)")
    error = _error(new_task_to_inference, _task(taskType=3, imageMaskInitiatorUUID=GUIDE))
    assert error.message.startswith("imageInitiatorUUID is required")


def _unit(**fields: Any) -> dict[str, Any]:
    return {"preprocessor": "canny", "guideImageUUID": GUIDE, **fields}


def test_controlnet_text_to_image() -> None:
    units = [
        _unit(weight=0.8, startStep=0, endStep=15, controlMode="balanced"),
        _unit(
            preprocessor="Depth_Midas",
            guideImageUUID=None,
            guideImageUrl="https://example.com/depth.png",
            startStepPercentage=0.1,
            endStepPercentage=0.9,
            controlMode="ControlNet",
        ),
    ]
    inference = new_task_to_inference(_task(taskType=9, controlNet=units))
    assert inference["controlNet"] == [
        {
            "model": "legacy-controlnet:canny",
            "guideImage": GUIDE,
            "weight": 0.8,
            "startStep": 0,
            "endStep": 15,
            "controlMode": "balanced",
        },
        {
            "model": "legacy-controlnet:depth_midas",
            "guideImage": "https://example.com/depth.png",
            "startStepPercentage": 10.0,  # legacy fractions -> current percentages
            "endStepPercentage": 90.0,
            "controlMode": "controlnet",
        },
    ]
    assert "seedImage" not in inference
    wire.parse(wire.ImageInference, inference)


def test_controlnet_image_to_image_and_inpainting() -> None:
    inference = new_task_to_inference(
        _task(taskType=10, imageInitiatorUUID=IMAGE, controlNet=[_unit()])
    )
    assert inference["seedImage"] == IMAGE and inference["strength"] == 0.8
    assert inference["controlNet"] == [{"model": "legacy-controlnet:canny", "guideImage": GUIDE}]
    # The legacy JS SDK sends ControlNet + image + mask as taskType 10.
    inference = new_task_to_inference(
        _task(
            taskType=10,
            imageInitiatorUUID=IMAGE,
            imageMaskInitiatorUUID=GUIDE,
            controlNet=[_unit()],
        )
    )
    assert inference["maskImage"] == GUIDE
    wire.parse(wire.ImageInference, inference)
    error = _error(new_task_to_inference, _task(taskType=10, controlNet=[_unit()]))
    assert error.message.startswith("imageInitiatorUUID is required: taskType 10")


def test_controlnet_units_are_required_by_types_9_and_10_and_optional_elsewhere() -> None:
    for payload in (_task(taskType=9), _task(taskType=9, controlNet=[])):
        error = _error(new_task_to_inference, payload)
        assert error.message == (
            "controlNet is required: taskType 9 (ControlNet Text to Image) needs at least one unit"
        )
    inference = new_task_to_inference(_task(taskType=1, controlNet=[_unit()]))
    assert len(inference["controlNet"]) == 1
    assert "controlNet" not in new_task_to_inference(_task(controlNet=[]))


def test_controlnet_zero_values_the_go_sdk_sends() -> None:
    unit = {
        "preprocessor": "openpose",
        "weight": 0.5,
        "startStep": 0,
        "endStep": 0,
        "guideImageUUID": GUIDE,
        "controlMode": "",
    }
    inference = new_task_to_inference(_task(taskType=9, controlNet=[unit]))
    assert inference["controlNet"] == [
        {"model": "legacy-controlnet:openpose", "guideImage": GUIDE, "weight": 0.5, "startStep": 0}
    ]


def test_every_controlnet_type_becomes_a_model_id() -> None:
    for name in CONTROLNET_TYPES:
        inference = new_task_to_inference(_task(controlNet=[_unit(preprocessor=name)]))
        assert inference["controlNet"][0]["model"] == f"legacy-controlnet:{name}"


@pytest.mark.parametrize(
    ("unit", "message"),
    [
        (_unit(preprocessor="sketchy"), "controlNet[0].preprocessor 'sketchy' is not a ControlNet"),
        (_unit(preprocessor=None), "controlNet[0].preprocessor is required"),
        (_unit(guideImageUUID=None), "controlNet[0].guideImageUUID is required (or guideImageUrl)"),
        (
            _unit(guideImageUrl="https://example.com/a.png"),
            "controlNet[0].guideImageUUID and guideImageUrl both given",
        ),
        (
            _unit(startStep=2, startStepPercentage=0.1),
            "controlNet[0].startStep and startStepPercentage both given",
        ),
        (
            _unit(endStep=10, endStepPercentage=0.5),
            "controlNet[0].endStep and endStepPercentage both given",
        ),
        (_unit(endStepPercentage=1.5), "controlNet[0].endStepPercentage must be at most 1"),
        (_unit(startStep=-1), "controlNet[0].startStep must be at least 0"),
        (_unit(controlMode="strong"), "controlNet[0].controlMode 'strong' is not one of"),
        (_unit(weight="high"), "controlNet[0].weight must be a number"),
    ],
)
def test_controlnet_unit_errors(unit: dict[str, Any], message: str) -> None:
    error = _error(new_task_to_inference, _task(taskType=9, controlNet=[unit]))
    assert error.message.startswith(message) and error.task_uuid == UUID


def test_loras() -> None:
    loras = [
        {"modelId": "civitai:1@2", "weight": 0.5},
        {"modelId": "civitai:3@4"},
        {"loraCivitaiAIR": "civitai:5@6", "weight": 1},  # an early SDK's field name
    ]
    assert new_task_to_inference(_task(lora=loras))["lora"] == [
        {"model": "civitai:1@2", "weight": 0.5},
        {"model": "civitai:3@4", "weight": 1.0},
        {"model": "civitai:5@6", "weight": 1},
    ]
    error = _error(new_task_to_inference, _task(lora=[{"weight": 1}]))
    assert error.message.startswith("lora[0].modelId is required")


# --- messages -----------------------------------------------------------------------------------


def test_parse_connection_and_ping() -> None:
    assert parse_message({"ping": True}) == Ping()
    assert parse_message({"newConnection": {"apiKey": "K"}}) == NewConnection("K")
    resumed = parse_message({"newConnection": {"apiKey": "K", "connectionSessionUUID": "S"}})
    assert resumed == NewConnection("K", "S")
    assert isinstance(resumed, NewConnection)
    assert resumed.auth_task() == {
        "taskType": "authentication",
        "apiKey": "K",
        "connectionSessionUUID": "S",
    }
    assert NewConnection("K").auth_task() == {"taskType": "authentication", "apiKey": "K"}
    error = _error(parse_message, {"newConnection": {}})
    assert error.error_id is ErrorId.INVALID_API_KEY and "apiKey" in error.message


@pytest.mark.parametrize(
    ("frame", "part"),
    [
        ([{"newTask": {}}], "a legacy message is a JSON object"),
        ("ping", "a legacy message is a JSON object"),
        ({"newThing": {"taskUUID": UUID}}, "got no known message (keys: newThing)"),
        ({}, "got no known message"),
        ({"newTask": _task(), "newImageUpload": {}}, "got several messages"),
        ({"newTask": "a cat"}, "newTask must be a JSON object"),
    ],
)
def test_parse_refuses_what_is_no_message(frame: Any, part: str) -> None:
    error = _error(parse_message, frame)
    assert part in error.message and error.error_id is ErrorId.INVALID_MESSAGE


def test_unknown_message_errors_carry_its_task_uuid() -> None:
    assert _error(parse_message, {"newThing": {"taskUUID": UUID}}).task_uuid == UUID


def test_parse_new_task() -> None:
    message = parse_message({"newTask": _task(promptText="a cat -no dog", styleId=3)})
    assert isinstance(message, LegacyTask)
    assert message.kind is Kind.NEW_TASK and message.task_uuid == UUID
    assert message.alt_text == "a cat"  # the client's positive prompt, before the style
    assert message.task == new_task_to_inference(_task(promptText="a cat -no dog", styleId=3))


@pytest.mark.parametrize("kind", list(Kind))
def test_every_task_message_needs_a_task_uuid(kind: Kind) -> None:
    for body in ({}, {"taskUUID": ""}, {"taskUUID": 5}):
        error = _error(parse_message, {kind.value: body})
        assert error.message.startswith("taskUUID is required") and error.task_uuid is None


def test_image_upload() -> None:
    body = {"imageBase64": "data:image/png;base64,iVBORw0KGgo=", "taskUUID": UUID, "taskType": 7}
    task = {"taskType": "imageUpload", "taskUUID": UUID, "image": body["imageBase64"]}
    assert new_image_upload_to_task(body) == task
    message = parse_message({"newImageUpload": body})
    assert message == LegacyTask(Kind.IMAGE_UPLOAD, UUID, task)
    wire.parse(wire.ImageUpload, task)
    error = _error(new_image_upload_to_task, {"taskUUID": UUID})
    assert error.message == "imageBase64 is required" and error.task_uuid == UUID


def _preprocess(**fields: Any) -> dict[str, Any]:
    return {"taskUUID": UUID, "preProcessorType": "canny", "guideImageUUID": IMAGE, **fields}


def test_preprocess_canny() -> None:
    task = preprocess_to_task(
        _preprocess(
            width=768,
            height=0,  # the Go SDK's unset
            lowThresholdCanny=50,
            highThresholdCanny=150,
            includeHandsAndFaceOpenPose=True,
            taskType=11,
        )
    )
    assert task == {
        "taskType": "imageControlNetPreProcess",
        "taskUUID": UUID,
        "inputImage": IMAGE,
        "preProcessorType": "canny",
        "outputType": "URL",
        "width": 768,
        "lowThresholdCanny": 50,
        "highThresholdCanny": 150,
    }
    wire.parse(wire.ControlNetPreProcess, task)


@pytest.mark.parametrize(
    ("name", "hands_and_face", "code"),
    [
        ("depth", False, "depth_midas"),
        ("depth_zoe", False, "depth_zoe"),
        ("normalbae", False, "normal_bae"),
        ("openpose", False, "openpose"),
        ("openpose", True, "openpose_full"),
        ("openpose_hand", True, "openpose_hand"),  # a named variant stays
        ("lineart", True, "lineart"),
        ("lineart_realistic", False, "lineart"),
        ("scribble", False, "scribble_hed"),
        ("softedge", False, "softedge_hed"),
        ("MLSD", False, "mlsd"),
    ],
)
def test_preprocess_names_become_engine_codes(name: str, hands_and_face: bool, code: str) -> None:
    task = preprocess_to_task(
        _preprocess(
            preProcessorType=name,
            includeHandsAndFaceOpenPose=hands_and_face,
            lowThresholdCanny=100,
            highThresholdCanny=200,
        )
    )
    assert task["preProcessorType"] == code
    assert "lowThresholdCanny" not in task and "highThresholdCanny" not in task  # canny only


def test_preprocess_guide_image_url() -> None:
    url = "https://example.com/photo.jpg"
    task = preprocess_to_task(_preprocess(guideImageUUID=None, guideImageUrl=url))
    assert task["inputImage"] == url


@pytest.mark.parametrize(
    ("fields", "message", "error_id"),
    [
        ({"preProcessorType": "seg"}, "preProcessorType 'seg' is not available: segmentation", 4),
        ({"preProcessorType": "tile"}, "preProcessorType 'tile' is not available", 4),
        ({"preProcessorType": "hed2"}, "preProcessorType 'hed2' is unknown; known: canny", 3),
        ({"preProcessorType": None}, "preProcessorType is required", 3),
        ({"guideImageUUID": None}, "guideImageUUID is required (or guideImageUrl)", 3),
        ({"width": -5}, "width must be at least 1", 3),
        ({"lowThresholdCanny": 300}, "lowThresholdCanny must be at most 255", 3),
    ],
)
def test_preprocess_errors(fields: dict[str, Any], message: str, error_id: int) -> None:
    error = _error(preprocess_to_task, _preprocess(**fields))
    assert error.message.startswith(message) and error.error_id == error_id
    assert error.task_uuid == UUID


def test_reverse_clip() -> None:
    body = {"imageUUID": IMAGE, "taskUUID": UUID}
    task = {"taskType": "imageCaption", "taskUUID": UUID, "inputImage": IMAGE}
    assert reverse_clip_to_task(body) == task
    assert parse_message({"newReverseImageClip": body}) == LegacyTask(Kind.REVERSE_CLIP, UUID, task)
    assert _error(reverse_clip_to_task, {"taskUUID": UUID}).message == "imageUUID is required"


def test_prompt_enhance() -> None:
    body = {
        "prompt": "a cat",
        "taskUUID": UUID,
        "promptMaxLength": 200,
        "promptVersions": 3,
        "promptLanguageId": 1,
    }
    task = {
        "taskType": "promptEnhance",
        "taskUUID": UUID,
        "prompt": "a cat",
        "promptMaxLength": 200,
        "promptVersions": 3,
    }
    assert prompt_enhance_to_task(body) == task
    message = parse_message({"newPromptEnhance": body})
    assert message == LegacyTask(Kind.PROMPT_ENHANCE, UUID, task, expected=3)
    defaults = prompt_enhance_to_task({"promptText": "a cat", "taskUUID": UUID})
    assert (defaults["promptMaxLength"], defaults["promptVersions"]) == (380, 1)
    assert prompt_enhance_to_task({**body, "promptMaxLength": 0})["promptMaxLength"] == 380
    error = _error(prompt_enhance_to_task, {**body, "promptLanguageId": 500})
    assert error.message.startswith("promptLanguageId 500 is unknown")
    assert _error(prompt_enhance_to_task, {"taskUUID": UUID}).message == "prompt is required"
    error = _error(prompt_enhance_to_task, {**body, "promptVersions": 0})
    assert error.message == "promptVersions must be at least 1, not 0"


def test_upscale() -> None:
    body = {"imageUUID": IMAGE, "taskUUID": UUID, "upscaleFactor": 4}
    task = {
        "taskType": "imageUpscale",
        "taskUUID": UUID,
        "inputImage": IMAGE,
        "upscaleFactor": 4,
        "outputType": "URL",
    }
    assert upscale_to_task(body) == task
    assert parse_message({"newUpscaleGan": body}) == LegacyTask(Kind.UPSCALE, UUID, task)
    assert upscale_to_task({**body, "upscaleFactor": None})["upscaleFactor"] == 2
    assert upscale_to_task({**body, "upscaleFactor": 0})["upscaleFactor"] == 2
    assert "upscaleFactor" in _error(upscale_to_task, {**body, "upscaleFactor": "x4"}).message


def test_remove_background() -> None:
    body = {"imageUUID": IMAGE, "taskUUID": UUID, "taskType": 8}
    task = {
        "taskType": "imageBackgroundRemoval",
        "taskUUID": UUID,
        "inputImage": IMAGE,
        "outputType": "URL",
    }
    assert remove_background_to_task(body) == task
    message = parse_message({"newRemoveBackground": body})
    assert message == LegacyTask(Kind.REMOVE_BACKGROUND, UUID, task)


# --- replies ------------------------------------------------------------------------------------


def _image_item(image_uuid: str, nsfw: bool | None = False) -> dict[str, Any]:
    return {
        "taskType": "imageInference",
        "taskUUID": UUID,
        "imageUUID": image_uuid,
        "imageURL": f"http://easel.local/images/{image_uuid}.jpg",
        "seed": 5,
        "NSFWContent": nsfw,
    }


def test_new_images() -> None:
    items = [_image_item(IMAGE), _image_item(GUIDE, nsfw=True)]
    assert inference_items_to_new_images(items, "country house", total=4) == {
        "newImages": {
            "images": [
                {
                    "imageSrc": f"http://easel.local/images/{IMAGE}.jpg",
                    "imageUUID": IMAGE,
                    "bNSFWContent": False,
                    "imageAltText": "country house",
                    "taskUUID": UUID,
                },
                {
                    "imageSrc": f"http://easel.local/images/{GUIDE}.jpg",
                    "imageUUID": GUIDE,
                    "bNSFWContent": True,
                    "imageAltText": "country house",
                    "taskUUID": UUID,
                },
            ],
            "totalAvailableResults": 4,
        }
    }
    item = _image_item(IMAGE, nsfw=None)
    del item["NSFWContent"]
    reply = inference_items_to_new_images([item])
    assert reply["newImages"]["images"][0]["bNSFWContent"] is False
    assert reply["newImages"]["totalAvailableResults"] == 1
    assert reply["newImages"]["images"][0]["imageAltText"] == ""


def test_new_images_from_a_parsed_task() -> None:
    message = parse_message({"newTask": _task(promptText="a cat -no dog", numberResults=3)})
    assert isinstance(message, LegacyTask)
    frame = legacy_reply(message, [_image_item(IMAGE)])  # one of three images so far
    assert frame["newImages"]["totalAvailableResults"] == 3
    assert frame["newImages"]["images"][0]["imageAltText"] == "a cat"


def test_result_items_without_their_fields_are_internal_errors() -> None:
    item = _image_item(IMAGE)
    del item["imageURL"]
    error = _error(inference_items_to_new_images, [item])
    assert error.error_id is ErrorId.INTERNAL_ERROR and "imageURL" in error.message
    assert error.task_uuid == UUID


def test_utility_replies() -> None:
    upload = {"taskType": "imageUpload", "taskUUID": UUID, "imageUUID": IMAGE, "imageURL": "u"}
    expected = {
        "newUploadedImageUUID": {"newImageUUID": IMAGE, "newImageSrc": "u", "taskUUID": UUID}
    }
    assert uploaded_image_reply(upload) == expected
    assert legacy_reply(LegacyTask(Kind.IMAGE_UPLOAD, UUID, {}), [upload]) == expected

    guide = {
        "taskType": "imageControlNetPreProcess",
        "taskUUID": UUID,
        "guideImageUUID": GUIDE,
        "inputImageUUID": IMAGE,
        "guideImageURL": "g",
    }
    expected = {
        "newPreProcessControlNet": {
            "taskUUID": UUID,
            "newImageUUID": GUIDE,
            "newImageSrc": "g",
            "bNSFWContent": False,
            "initImageUUID": IMAGE,
        }
    }
    assert preprocess_reply(guide) == expected
    assert legacy_reply(LegacyTask(Kind.PREPROCESS, UUID, {}), [guide]) == expected

    texts = [{"taskType": "x", "taskUUID": UUID, "text": t} for t in ("one", "two")]
    entries = [{"taskUUID": UUID, "text": "one"}, {"taskUUID": UUID, "text": "two"}]
    reply = legacy_reply(LegacyTask(Kind.REVERSE_CLIP, UUID, {}), texts[:1])
    assert reply == {"newReverseClip": {"texts": entries[:1]}}
    reply = legacy_reply(LegacyTask(Kind.PROMPT_ENHANCE, UUID, {}, expected=2), texts)
    assert reply == {"newPromptEnhancer": {"texts": entries}}

    image = {"taskUUID": UUID, "imageUUID": GUIDE, "imageURL": "i", "inputImageUUID": IMAGE}
    entry = {
        "imageSrc": "i",
        "imageUUID": GUIDE,
        "bNSFWContent": False,
        "imageAltText": "",
        "taskUUID": UUID,
    }
    reply = legacy_reply(LegacyTask(Kind.UPSCALE, UUID, {}), [image])
    assert reply == {"newUpscaleGan": {"images": [entry]}}
    reply = legacy_reply(LegacyTask(Kind.REMOVE_BACKGROUND, UUID, {}), [image])
    assert reply == {"newRemoveBackground": {"images": [entry]}}


def test_single_result_replies_refuse_other_counts() -> None:
    error = _error(legacy_reply, LegacyTask(Kind.IMAGE_UPLOAD, UUID, {}), [])
    assert error.error_id is ErrorId.INTERNAL_ERROR
    assert error.message == "newImageUpload makes one result, got 0"


def test_connection_replies_and_error_frames() -> None:
    assert pong_reply() == {"pong": True}
    assert session_reply("S") == {"newConnectionSessionUUID": {"connectionSessionUUID": "S"}}
    assert invalid_api_key_frame() == {
        "error": True,
        "errorId": 19,
        "errorMessage": "Invalid api key",
    }
    assert error_frame("bad", ErrorId.UNSUPPORTED) == {
        "error": True,
        "errorId": 4,
        "errorMessage": "bad",
    }
    assert error_frame("bad", 3, UUID)["taskUUID"] == UUID
    assert LegacyError("m", UUID, ErrorId.SERVER_BUSY).frame() == {
        "error": True,
        "errorId": 7,
        "errorMessage": "m",
        "taskUUID": UUID,
    }


def test_current_errors_become_legacy_frames() -> None:
    item = {"code": "invalidApiKey", "message": "Invalid api key", "taskType": "authentication"}
    assert error_frame_from_current(item) == invalid_api_key_frame()
    item = {"code": "unknownModel", "message": "no model", "taskType": "x", "taskUUID": UUID}
    assert error_frame_from_current(item) == {
        "error": True,
        "errorId": ErrorId.UNKNOWN_MODEL,
        "errorMessage": "no model",
        "taskUUID": UUID,
    }
    assert error_frame_from_current({"code": "somethingNew", "message": "m"})["errorId"] == 8
