"""The legacy (picfinder) protocol's vocabularies, as data: one table per numeric id or name.

Everything here is copied from the legacy API documentation (seed 004) except what easel adds:
the style templates (the hosted service never published its own), the choice of which scheduler
ids easel cannot honour, and the legacy preprocessor name -> easel preprocessor code table.
Lookups stay dict reads in translate.py; nothing here branches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

# --- sizes --------------------------------------------------------------------------------------

# sizeId -> (width, height). 11, 16, 17, 20 and 21 are the documentation's SDXL sizes.
SIZES: Mapping[int, tuple[int, int]] = MappingProxyType(
    {
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
)
DEFAULT_SIZE_ID = 1  # what the legacy Go SDK sends when the caller sets none

# --- schedulers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scheduler:
    """A schedulerId: the Runware scheduler name it stands for, and why easel refuses it if so."""

    name: str
    unsupported: str = ""  # non-empty: easel cannot run it, and this says why


_NOT_TEXT_TO_IMAGE = "it is not a text-to-image sampler (diffusers has it for other pipelines)"
_NOT_IN_EASEL = "easel's sampler table has no such scheduler"

# The names are Runware's current `scheduler` names, which the current protocol passes to the
# engine's sampler table (pipelines/samplers.py: "Default", the diffusers class names and the
# A1111 names). Ids whose scheduler is missing from that table are refused here with the reason,
# so a legacy client hears which id to change instead of a generic unknown-sampler error.
SCHEDULERS: Mapping[int, Scheduler] = MappingProxyType(
    {
        1: Scheduler("Default"),  # the model's own scheduler
        2: Scheduler("DDIMScheduler"),
        3: Scheduler("DDIMInverseScheduler", "it inverts images into noise: " + _NOT_TEXT_TO_IMAGE),
        4: Scheduler("DDPMScheduler"),
        5: Scheduler("DEISMultistepScheduler"),
        6: Scheduler("DPMSolverSinglestepScheduler"),
        7: Scheduler("DPMSolverMultistepScheduler"),
        8: Scheduler("HeunDiscreteScheduler"),
        9: Scheduler("KDPM2DiscreteScheduler"),
        10: Scheduler("KDPM2AncestralDiscreteScheduler"),
        11: Scheduler(
            "KarrasVeScheduler",
            "a scheduler for unconditional models, deprecated in diffusers",
        ),
        12: Scheduler("LMSDiscreteScheduler"),
        13: Scheduler("PNDMScheduler"),
        14: Scheduler("ScoreSdeVeScheduler", "a score-SDE scheduler: " + _NOT_TEXT_TO_IMAGE),
        15: Scheduler("IPNDMScheduler", _NOT_IN_EASEL),
        16: Scheduler("ScoreSdeVpScheduler", "a score-SDE scheduler, deprecated in diffusers"),
        17: Scheduler("EulerDiscreteScheduler"),
        18: Scheduler("EulerAncestralDiscreteScheduler"),
        19: Scheduler("VQDiffusionScheduler", "a VQ-Diffusion scheduler: " + _NOT_TEXT_TO_IMAGE),
        20: Scheduler("UniPCMultistepScheduler"),
        21: Scheduler("RePaintScheduler", "a RePaint inpainting scheduler: " + _NOT_TEXT_TO_IMAGE),
        22: Scheduler("DPM++ 2M Karras"),
        23: Scheduler("DPM++ 2M SDE Karras"),
        24: Scheduler("DPM++ 2M SDE"),
        25: Scheduler("DPM++ SDE Karras"),
        26: Scheduler("DPM++ SDE"),
    }
)

# --- styles -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """A styleId: its name, a template around the prompt and words added to the negative prompt.

    `positive` holds "{prompt}" once; it is replaced literally (str.replace, not str.format), so
    braces in a client's prompt are kept as written."""

    name: str
    positive: str
    negative: str = ""


PROMPT_SLOT = "{prompt}"

# easel's own templates, in the spirit of the widely used SDXL style presets.
STYLES: Mapping[int, Style] = MappingProxyType(
    {
        1: Style("No style", PROMPT_SLOT),
        2: Style(
            "Anime",
            "anime artwork of {prompt}, anime style, key visual, vibrant colors, clean line work",
            "photo, photorealistic, realism, 3d render, deformed",
        ),
        3: Style(
            "Photographic",
            "photograph of {prompt}, 50mm lens, natural light, sharp focus, highly detailed",
            "drawing, painting, illustration, cartoon, anime, render, blurry",
        ),
        4: Style(
            "Digital Art",
            "digital artwork of {prompt}, detailed digital painting, concept art, vivid colors",
            "photo, photorealistic, low quality, blurry",
        ),
        5: Style(
            "Comic Book",
            "comic book panel of {prompt}, bold ink outlines, halftone shading, flat colors",
            "photograph, photorealistic, realism, 3d render",
        ),
        6: Style(
            "Fantasy Art",
            "fantasy painting of {prompt}, epic, magical atmosphere, ethereal light, intricate",
            "photograph, modern, mundane, low detail",
        ),
        7: Style(
            "Analog Film",
            "analog film photo of {prompt}, film grain, faded colors, vintage, soft contrast",
            "digital, painting, illustration, cartoon, oversaturated",
        ),
        8: Style(
            "Neon Punk",
            "neon punk style {prompt}, cyberpunk, glowing neon lights, magenta and cyan, high "
            "contrast",
            "muted colors, dull, daylight, painting",
        ),
        9: Style(
            "Isometric",
            "isometric illustration of {prompt}, isometric view, clean geometry, diorama, soft "
            "shadows",
            "perspective distortion, photograph, blurry, messy",
        ),
        10: Style(
            "Low Poly",
            "low poly 3d render of {prompt}, faceted polygons, flat shading, geometric, minimal",
            "photograph, smooth surfaces, high poly, noisy, detailed texture",
        ),
        11: Style(
            "Origami",
            "origami paper craft of {prompt}, folded paper, crisp creases, paper texture, studio "
            "lighting",
            "photograph of a real object, fabric, plastic, blurry",
        ),
        12: Style(
            "Line Art",
            "line art drawing of {prompt}, clean black ink lines on white, minimal, vector style",
            "color, shading, photograph, painting, gradients, 3d",
        ),
    }
)

# --- task types ---------------------------------------------------------------------------------

TASK_TYPES: Mapping[int, str] = MappingProxyType(
    {
        1: "Text to Image",
        2: "Image to Image",
        3: "Inpainting",
        4: "Image to Text",
        5: "Prompt Enhancer",
        6: "Image Upscale",
        7: "Image Upload",
        8: "Remove Background",
        9: "ControlNet Text to Image",
        10: "ControlNet Image to Image",
        11: "ControlNet preprocess image",
    }
)


class Need(StrEnum):
    """Whether a newTask task type needs an input."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    FORBIDDEN = "forbidden"


@dataclass(frozen=True)
class InferenceTaskType:
    """Which inputs one image-generation task type takes (seed image, mask, ControlNet units)."""

    seed_image: Need  # imageInitiatorUUID
    mask: Need  # imageMaskInitiatorUUID
    control_net: Need  # controlNet units


# The task types a newTask may carry. The legacy JS SDK sends 10 for ControlNet + image + mask
# (ControlNet inpainting), so 10 takes an optional mask.
INFERENCE_TASK_TYPES: Mapping[int, InferenceTaskType] = MappingProxyType(
    {
        1: InferenceTaskType(Need.FORBIDDEN, Need.FORBIDDEN, Need.OPTIONAL),
        2: InferenceTaskType(Need.REQUIRED, Need.FORBIDDEN, Need.OPTIONAL),
        3: InferenceTaskType(Need.REQUIRED, Need.REQUIRED, Need.OPTIONAL),
        9: InferenceTaskType(Need.FORBIDDEN, Need.FORBIDDEN, Need.REQUIRED),
        10: InferenceTaskType(Need.REQUIRED, Need.OPTIONAL, Need.REQUIRED),
    }
)
DEFAULT_TASK_TYPE = 1

# The other task types are served by their own messages, not by newTask.
TASK_TYPE_MESSAGES: Mapping[int, str] = MappingProxyType(
    {
        4: "newReverseImageClip",
        5: "newPromptEnhance",
        6: "newUpscaleGan",
        7: "newImageUpload",
        8: "newRemoveBackground",
        11: "newPreProcessControlNet",
    }
)

# --- models -------------------------------------------------------------------------------------

LEGACY_MODEL_PREFIX = "legacy:"


@dataclass(frozen=True)
class LegacyModel:
    """A numeric modelId: the public id the catalogue resolves (the operator binds it to a local
    checkpoint with `ids = ["legacy:13"]` in the models manifest; unbound, it is the default
    checkpoint of the documented model's architecture: models/catalogue.py
    LEGACY_MODEL_ARCHITECTURES, which lists these ids too) and the documented model."""

    public_id: str
    name: str


LEGACY_MODEL_IDS: Mapping[int, LegacyModel] = MappingProxyType(
    {
        number: LegacyModel(f"{LEGACY_MODEL_PREFIX}{number}", name)
        for number, name in {
            4: "SDXL v1.0",
            13: "rev_animated v1.2.2",
            18: "absolutereality v1.8.1",
            19: "cyberrealistic v3.2",
            20: "dreamshaper v7.0",
            22: "ghostmix_v2.0 bakedvae",
            25: "samaritan_3d_cartoon v3.0",
        }.items()
    }
)

# --- ControlNet ---------------------------------------------------------------------------------

# A newTask controlNet unit names its ControlNet by `preprocessor`, the type of control map its
# guide image is. The unit's model becomes this prefix plus that name: the operator binds such
# ids in the manifest, else the catalogue looks for an installed ControlNet of that type.
LEGACY_CONTROLNET_PREFIX = "legacy-controlnet:"


@dataclass(frozen=True)
class Preprocessor:
    """A legacy preprocessor name: the easel preprocessor code (pipelines/preprocessors.py,
    A1111's names) that makes its map, or why easel has none."""

    code: str | None
    unsupported: str = ""


_SEG = "segmentation detectors (OneFormer / UniFormer) are not among easel's preprocessors"
_TILE = "the tile preprocessor is not among easel's preprocessors"
_INPAINT = "an inpainting ControlNet input is made from an image and its mask, not by a detector"

# The documentation's names (SD 1.5 list; the SDXL list is a subset) and the preprocessor groups
# that newPreProcessControlNet takes (canny, depth, normalbae, openpose, scribble...: the legacy
# SDKs map every name to its group before they send it). A group takes A1111's default member.
PREPROCESSORS: Mapping[str, Preprocessor] = MappingProxyType(
    {
        # names
        "canny": Preprocessor("canny"),
        "depth_leres": Preprocessor("depth_leres"),
        "depth_midas": Preprocessor("depth_midas"),
        "depth_zoe": Preprocessor("depth_zoe"),
        "inpaint_global_harmonious": Preprocessor(None, _INPAINT),
        "lineart_anime": Preprocessor("lineart_anime"),
        "lineart_coarse": Preprocessor("lineart_coarse"),
        "lineart_realistic": Preprocessor("lineart"),  # A1111's "lineart" is the realistic one
        "lineart_standard": Preprocessor("lineart_standard"),
        "mlsd": Preprocessor("mlsd"),
        "normal_bae": Preprocessor("normal_bae"),
        "openpose": Preprocessor("openpose"),
        "openpose_face": Preprocessor("openpose_face"),
        "openpose_faceonly": Preprocessor("openpose_faceonly"),
        "openpose_full": Preprocessor("openpose_full"),
        "openpose_hand": Preprocessor("openpose_hand"),
        "scribble_hed": Preprocessor("scribble_hed"),
        "scribble_pidinet": Preprocessor("scribble_pidinet"),
        "seg_ofade20k": Preprocessor(None, _SEG),
        "seg_ofcoco": Preprocessor(None, _SEG),
        "seg_ufade20k": Preprocessor(None, _SEG),
        "shuffle": Preprocessor("shuffle"),
        "softedge_hed": Preprocessor("softedge_hed"),
        "softedge_hedsafe": Preprocessor("softedge_hedsafe"),
        "softedge_pidinet": Preprocessor("softedge_pidinet"),
        "softedge_pidisafe": Preprocessor("softedge_pidisafe"),
        "tile_gaussian": Preprocessor(None, _TILE),
        # groups (canny, mlsd, openpose, shuffle and lineart_anime are names as well)
        "depth": Preprocessor("depth_midas"),
        "normalbae": Preprocessor("normal_bae"),
        "lineart": Preprocessor("lineart"),
        "scribble": Preprocessor("scribble_hed"),
        "softedge": Preprocessor("softedge_hed"),
        "seg": Preprocessor(None, _SEG),
        "tile": Preprocessor(None, _TILE),
    }
)
# includeHandsAndFaceOpenPose turns the plain openpose into this one; named variants stay.
OPENPOSE_WITH_HANDS_AND_FACE: Mapping[str, str] = MappingProxyType({"openpose": "openpose_full"})

# The ControlNet types a newTask unit may name: every legacy name, supported by a preprocessor
# or not (the guide image is already a control map; only the ControlNet model matters).
CONTROLNET_TYPES: frozenset[str] = frozenset(PREPROCESSORS)

# --- languages ----------------------------------------------------------------------------------

# promptLanguageId -> language, as documented (193 is missing there too). null: auto-detect.
LANGUAGES: Mapping[int, str] = MappingProxyType(
    {
        1: "English (GB)",
        2: "Afar",
        3: "Abkhazian",
        4: "Afrikaans",
        5: "Amharic",
        6: "Arabic",
        7: "Assamese",
        8: "Aymara",
        9: "Azerbaijani",
        10: "Bashkir",
        11: "Belarusian",
        12: "Bulgarian",
        13: "Bihari",
        14: "Bislama",
        15: "Bengali/Bangla",
        16: "Tibetan",
        17: "Breton",
        18: "Catalan",
        19: "Corsican",
        20: "Czech",
        21: "Welsh",
        22: "Danish",
        23: "German",
        24: "Bhutani",
        25: "Greek",
        26: "Esperanto",
        27: "Spanish",
        28: "Estonian",
        29: "Basque",
        30: "Persian",
        31: "Finnish",
        32: "Fiji",
        33: "Faeroese",
        34: "French",
        35: "Frisian",
        36: "Irish",
        37: "Scots/Gaelic",
        38: "Galician",
        39: "Guarani",
        40: "Gujarati",
        41: "Hausa",
        42: "Hindi",
        43: "Croatian",
        44: "Hungarian",
        45: "Armenian",
        46: "Interlingua",
        47: "Interlingue",
        48: "Inupiak",
        49: "Indonesian",
        50: "Icelandic",
        51: "Italian",
        52: "Hebrew",
        53: "Japanese",
        54: "Yiddish",
        55: "Javanese",
        56: "Georgian",
        57: "Kazakh",
        58: "Greenlandic",
        59: "Cambodian",
        60: "Kannada",
        61: "Korean",
        62: "Kashmiri",
        63: "Kurdish",
        64: "Kirghiz",
        65: "Latin",
        66: "Lingala",
        67: "Laothian",
        68: "Lithuanian",
        69: "Latvian/Lettish",
        70: "Malagasy",
        71: "Maori",
        72: "Macedonian",
        73: "Malayalam",
        74: "Mongolian",
        75: "Moldavian",
        76: "Marathi",
        77: "Malay",
        78: "Maltese",
        79: "Burmese",
        80: "Nauru",
        81: "Nepali",
        82: "Dutch",
        83: "Norwegian",
        84: "Occitan",
        85: "(Afan)/Oromoor/Oriya",
        86: "Punjabi",
        87: "Polish",
        88: "Pashto/Pushto",
        89: "Portuguese",
        90: "Quechua",
        91: "Rhaeto-Romance",
        92: "Kirundi",
        93: "Romanian",
        94: "Russian",
        95: "Kinyarwanda",
        96: "Sanskrit",
        97: "Sindhi",
        98: "Sangro",
        99: "Serbo-Croatian",
        100: "Singhalese",
        101: "Slovak",
        102: "Slovenian",
        103: "Samoan",
        104: "Shona",
        105: "Somali",
        106: "Albanian",
        107: "Serbian",
        108: "Siswati",
        109: "Sesotho",
        110: "Sundanese",
        111: "Swedish",
        112: "Swahili",
        113: "Tamil",
        114: "Telugu",
        115: "Tajik",
        116: "Thai",
        117: "Tigrinya",
        118: "Turkmen",
        119: "Tagalog",
        120: "Setswana",
        121: "Tonga",
        122: "Turkish",
        123: "Tsonga",
        124: "Tatar",
        125: "Twi",
        126: "Ukrainian",
        127: "Urdu",
        128: "Uzbek",
        129: "Vietnamese",
        130: "Volapuk",
        131: "Wolof",
        132: "Xhosa",
        133: "Yoruba",
        134: "Chinese",
        135: "Zulu",
        136: "Akan",
        137: "Arabic (AE)",
        138: "Arabic (BH)",
        139: "Arabic (DZ)",
        140: "Arabic (EG)",
        141: "Arabic (IQ)",
        142: "Arabic (JO)",
        143: "Arabic (KW)",
        144: "Arabic (LB)",
        145: "Arabic (LY)",
        146: "Arabic (MA)",
        147: "Arabic (OM)",
        148: "Arabic (QA)",
        149: "Arabic (SA)",
        150: "Arabic (SY)",
        151: "Arabic (TN)",
        152: "Arabic (YE)",
        153: "Aragonese",
        154: "Asturian",
        155: "Avaric",
        156: "Avestan",
        157: "Azerbaijani (Cyrillic)",
        158: "Bambara",
        159: "Bengali",
        160: "Bihari languages",
        161: "Bosnian",
        162: "Chamorro",
        163: "Chechen",
        164: "Chichewa",
        165: "Chinese (HK)",
        166: "Chinese (MO)",
        167: "Chinese (SG)",
        168: "Chinese (simplified)",
        169: "Chinese (traditional)",
        170: "Chinese (TW)",
        171: "Church Slavic",
        172: "Chuvash",
        173: "Cornish",
        174: "Cree",
        175: "Dari",
        176: "Divehi",
        177: "Dzongkha",
        178: "English (AU)",
        179: "English (BZ)",
        180: "English (CA)",
        181: "English (GH)",
        182: "English (HK)",
        183: "English (IE)",
        184: "English (IN)",
        185: "English (JM)",
        186: "English (KE)",
        187: "English (MU)",
        188: "English (NG)",
        189: "English (NZ)",
        190: "English (PH)",
        191: "English (SG)",
        192: "English (TT)",
        194: "English (US)",
        195: "English (ZA)",
        196: "English (ZW)",
        197: "Ewe",
        198: "Faroese",
        199: "Fijian",
        200: "Filipino",
        201: "Flemish",
        202: "French (BE)",
        203: "French (CA)",
        204: "French (CH)",
        205: "French (LU)",
        206: "French (MC)",
        207: "Fulah",
        208: "Ganda",
        209: "German (AT)",
        210: "German (BE)",
        211: "German (CH)",
        212: "German (LI)",
        213: "German (LU)",
        214: "Haitian Creole",
        215: "Herero",
        216: "Hiri Motu",
        217: "Ido",
        218: "Igbo",
        219: "Inuktitut",
        220: "Inupiaq",
        221: "Italian (CH)",
        222: "Jamaican Patois",
        223: "Kabyle",
        224: "Kalaallisut",
        225: "Kanuri",
        226: "Khmer",
        227: "Kikuyu; Gikuyu",
        228: "Komi",
        229: "Kongo",
        230: "Kuanyama; Kwanyama",
        231: "Lao",
        232: "Latvian",
        233: "Limburgish",
        234: "Lojban",
        235: "Luba-Katanga",
        236: "Luxembourgish",
        237: "Malay (BN)",
        238: "Manx",
        239: "Marshallese",
        240: "Moldavian; Moldovan",
        241: "Montenegrin",
        242: "Montenegrin (Cyrillic)",
        243: "Navajo; Navaho",
        244: "Ndonga",
        245: "North Ndebele",
        246: "Northern Sami",
        247: "Norwegian Bokmål",
        248: "Norwegian Nynorsk",
        249: "Ojibwa",
        250: "Oriya",
        251: "Oromo",
        252: "Ossetian; Ossetic",
        253: "Pali",
        254: "Panjabi; Punjabi",
        255: "Portuguese (BR)",
        256: "Pushto; Pashto",
        257: "Romani",
        258: "Romansh",
        259: "Rundi",
        260: "Rusyn",
        261: "Sango",
        262: "Sardinian",
        263: "Scottish Gaelic",
        264: "Serbian (Cyrillic)",
        265: "Sichuan Yi",
        266: "Sicilian",
        267: "Sinhalese",
        268: "Sotho",
        269: "South Ndebele",
        270: "Spanish (AR)",
        271: "Spanish (BO)",
        272: "Spanish (CL)",
        273: "Spanish (CO)",
        274: "Spanish (CR)",
        275: "Spanish (DO)",
        276: "Spanish (EC)",
        277: "Spanish (GT)",
        278: "Spanish (HN)",
        279: "Spanish (LA & C)",
        280: "Spanish (MX)",
        281: "Spanish (NI)",
        282: "Spanish (PA)",
        283: "Spanish (PE)",
        284: "Spanish (PR)",
        285: "Spanish (PY)",
        286: "Spanish (SV)",
        287: "Spanish (UY)",
        288: "Spanish (VE)",
        289: "Swati",
        290: "Swedish (FI)",
        291: "Tahitian",
        292: "Tswana",
        293: "Uighur",
        294: "Uzbek (Cyrillic)",
        295: "Venda",
        296: "Walloon",
        297: "Western Frisian",
        298: "Zhuang; Chuang",
    }
)

# promptLanguageId -> the language's ISO 639-1 code, for the translation model. Ids missing here
# (languages without a two-letter code) are translated from the detected language.
LANGUAGE_CODES: Mapping[int, str] = MappingProxyType(
    {
        1: "en",
        2: "aa",
        3: "ab",
        4: "af",
        5: "am",
        6: "ar",
        7: "as",
        8: "ay",
        9: "az",
        10: "ba",
        11: "be",
        12: "bg",
        13: "bh",
        14: "bi",
        15: "bn",
        16: "bo",
        17: "br",
        18: "ca",
        19: "co",
        20: "cs",
        21: "cy",
        22: "da",
        23: "de",
        24: "dz",
        25: "el",
        26: "eo",
        27: "es",
        28: "et",
        29: "eu",
        30: "fa",
        31: "fi",
        32: "fj",
        33: "fo",
        34: "fr",
        35: "fy",
        36: "ga",
        37: "gd",
        38: "gl",
        39: "gn",
        40: "gu",
        41: "ha",
        42: "hi",
        43: "hr",
        44: "hu",
        45: "hy",
        46: "ia",
        47: "ie",
        48: "ik",
        49: "id",
        50: "is",
        51: "it",
        52: "he",
        53: "ja",
        54: "yi",
        55: "jv",
        56: "ka",
        57: "kk",
        58: "kl",
        59: "km",
        60: "kn",
        61: "ko",
        62: "ks",
        63: "ku",
        64: "ky",
        65: "la",
        66: "ln",
        67: "lo",
        68: "lt",
        69: "lv",
        70: "mg",
        71: "mi",
        72: "mk",
        73: "ml",
        74: "mn",
        75: "ro",
        76: "mr",
        77: "ms",
        78: "mt",
        79: "my",
        80: "na",
        81: "ne",
        82: "nl",
        83: "no",
        84: "oc",
        86: "pa",
        87: "pl",
        88: "ps",
        89: "pt",
        90: "qu",
        91: "rm",
        92: "rn",
        93: "ro",
        94: "ru",
        95: "rw",
        96: "sa",
        97: "sd",
        98: "sg",
        99: "sh",
        100: "si",
        101: "sk",
        102: "sl",
        103: "sm",
        104: "sn",
        105: "so",
        106: "sq",
        107: "sr",
        108: "ss",
        109: "st",
        110: "su",
        111: "sv",
        112: "sw",
        113: "ta",
        114: "te",
        115: "tg",
        116: "th",
        117: "ti",
        118: "tk",
        119: "tl",
        120: "tn",
        121: "to",
        122: "tr",
        123: "ts",
        124: "tt",
        125: "tw",
        126: "uk",
        127: "ur",
        128: "uz",
        129: "vi",
        130: "vo",
        131: "wo",
        132: "xh",
        133: "yo",
        134: "zh",
        135: "zu",
        136: "ak",
        137: "ar",
        138: "ar",
        139: "ar",
        140: "ar",
        141: "ar",
        142: "ar",
        143: "ar",
        144: "ar",
        145: "ar",
        146: "ar",
        147: "ar",
        148: "ar",
        149: "ar",
        150: "ar",
        151: "ar",
        152: "ar",
        153: "an",
        155: "av",
        156: "ae",
        157: "az",
        158: "bm",
        159: "bn",
        160: "bh",
        161: "bs",
        162: "ch",
        163: "ce",
        164: "ny",
        165: "zh",
        166: "zh",
        167: "zh",
        168: "zh",
        169: "zh",
        170: "zh",
        171: "cu",
        172: "cv",
        173: "kw",
        174: "cr",
        175: "fa",
        176: "dv",
        177: "dz",
        178: "en",
        179: "en",
        180: "en",
        181: "en",
        182: "en",
        183: "en",
        184: "en",
        185: "en",
        186: "en",
        187: "en",
        188: "en",
        189: "en",
        190: "en",
        191: "en",
        192: "en",
        194: "en",
        195: "en",
        196: "en",
        197: "ee",
        198: "fo",
        199: "fj",
        200: "tl",
        201: "nl",
        202: "fr",
        203: "fr",
        204: "fr",
        205: "fr",
        206: "fr",
        207: "ff",
        208: "lg",
        209: "de",
        210: "de",
        211: "de",
        212: "de",
        213: "de",
        214: "ht",
        215: "hz",
        216: "ho",
        217: "io",
        218: "ig",
        219: "iu",
        220: "ik",
        221: "it",
        224: "kl",
        225: "kr",
        226: "km",
        227: "ki",
        228: "kv",
        229: "kg",
        230: "kj",
        231: "lo",
        232: "lv",
        233: "li",
        235: "lu",
        236: "lb",
        237: "ms",
        238: "gv",
        239: "mh",
        240: "ro",
        241: "sr",
        242: "sr",
        243: "nv",
        244: "ng",
        245: "nd",
        246: "se",
        247: "nb",
        248: "nn",
        249: "oj",
        250: "or",
        251: "om",
        252: "os",
        253: "pi",
        254: "pa",
        255: "pt",
        256: "ps",
        258: "rm",
        259: "rn",
        261: "sg",
        262: "sc",
        263: "gd",
        264: "sr",
        265: "ii",
        267: "si",
        268: "st",
        269: "nr",
        270: "es",
        271: "es",
        272: "es",
        273: "es",
        274: "es",
        275: "es",
        276: "es",
        277: "es",
        278: "es",
        279: "es",
        280: "es",
        281: "es",
        282: "es",
        283: "es",
        284: "es",
        285: "es",
        286: "es",
        287: "es",
        288: "es",
        289: "ss",
        290: "sv",
        291: "ty",
        292: "tn",
        293: "ug",
        294: "uz",
        295: "ve",
        296: "wa",
        297: "fy",
        298: "za",
    }
)
