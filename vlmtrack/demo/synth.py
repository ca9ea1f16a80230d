"""Synthetic LLaVA-Pretrain-format data: images of coloured shapes and captions that describe them.

Captions say what is actually drawn (colours, shapes, sizes, positions, counts, background) at three
levels of detail, so caption token lengths fill the short/medium/long buckets.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from vlmtrack.files import write_json

# LLaVA's brief-description instructions (LLaVA-Pretrain's human turns).
BRIEF_INSTRUCTIONS = [
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
]

COLOURS = {
    "red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (240, 220, 40),
    "purple": (140, 50, 180), "orange": (250, 140, 20), "white": (245, 245, 245), "black": (15, 15, 15),
}
BACKGROUNDS = {"gray": (128, 128, 128), "pink": (250, 180, 200), "brown": (120, 80, 40), "teal": (40, 140, 140)}
SHAPES = ["circle", "square", "triangle"]
SIZES = {"small": 0.14, "large": 0.26}
# Named positions on a 3x3 grid (fractions of the image side).
POSITIONS = {
    "top left": (0.2, 0.2), "top": (0.5, 0.2), "top right": (0.8, 0.2),
    "left": (0.2, 0.5), "center": (0.5, 0.5), "right": (0.8, 0.5),
    "bottom left": (0.2, 0.8), "bottom": (0.5, 0.8), "bottom right": (0.8, 0.8),
}
COUNT_WORDS = {2: "two", 3: "three"}
# Blank pictures: one uniform colour, any colour, and a caption that says there is nothing in it.
P_BLANK = 0.08
BLANK_CAPTION = "the picture is blank, there is nothing to describe."


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]
    detail: int  # 0 terse, 1 with size and place, 2 with every attribute of every shape
    fill: tuple[int, int, int] | None = None  # a blank picture's colour (it has no shapes)


def sample_scene(rng: random.Random) -> Scene:
    n = rng.choices([0, 1, 2, 3], weights=[P_BLANK, 0.5, 0.3, 0.2])[0]
    places = rng.sample(sorted(POSITIONS), n)
    shapes = tuple(
        Shape(rng.choice(sorted(COLOURS)), rng.choice(SHAPES), rng.choice(sorted(SIZES)), p) for p in places
    )
    detail = rng.choices([0, 1, 2], weights=[0.34, 0.33, 0.33])[0]
    fill = tuple(rng.randrange(256) for _ in range(3)) if n == 0 else None
    return Scene(rng.choice(sorted(BACKGROUNDS)), shapes, detail, fill)


def _place(position: str) -> str:
    return "in the center" if position == "center" else f"at the {position}"


def caption(scene: Scene) -> str:
    s = scene.shapes
    if not s:
        return BLANK_CAPTION
    if scene.detail == 0:
        if len(s) == 1:
            return f"a {s[0].colour} {s[0].shape} on {scene.background}"
        return f"{COUNT_WORDS[len(s)]} shapes on a {scene.background} background"
    if scene.detail == 1:
        first = s[0]
        text = f"a {first.size} {first.colour} {first.shape} {_place(first.position)} of a {scene.background} background"
        if len(s) > 1:
            text += f" with {len(s) - 1} more shape" + ("s" if len(s) > 2 else "")
        return text
    parts = [f"a {x.size} {x.colour} {x.shape} {_place(x.position)}" for x in s]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    count = "one shape" if len(s) == 1 else f"{COUNT_WORDS[len(s)]} shapes"
    return f"an image of {count} on a {scene.background} background: {body}"


def attribute_words(scene: Scene) -> list[str]:
    """The words an image 'tells' a reader: what a caption can only know from the pixels."""
    if not scene.shapes:  # a blank picture tells nothing
        return []
    words = [scene.background]
    for x in scene.shapes:
        words += [x.colour, x.shape, x.size, *x.position.split()]
    return words


def render(scene: Scene, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), scene.fill or BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for x in scene.shapes:
        cx, cy = (v * size for v in POSITIONS[x.position])
        r = SIZES[x.size] * size / 2 * 1.6
        box = [cx - r, cy - r, cx + r, cy + r]
        fill = COLOURS[x.colour]
        if x.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif x.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def human_turn(rng: random.Random) -> str:
    instruction = rng.choice(BRIEF_INSTRUCTIONS)
    return f"<image>\n{instruction}" if rng.random() < 0.5 else f"{instruction}\n<image>"


def sample_records(num_samples: int, seed: int) -> list[tuple[dict, Scene]]:
    """LLaVA-Pretrain records with their scenes; ids and nested image paths look like LLaVA's."""
    rng = random.Random(seed)
    ids = rng.sample(range(100_000, 999_999), num_samples)
    out = []
    for sample_id in ids:
        scene = sample_scene(rng)
        record = {
            "id": f"{sample_id:09d}",
            "image": f"{sample_id // 10_000:05d}/{sample_id:09d}.jpg",
            "conversations": [
                {"from": "human", "value": human_turn(rng)},
                {"from": "gpt", "value": caption(scene)},
            ],
        }
        out.append((record, scene))
    return out


def write_dataset(root: Path, num_samples: int, seed: int, image_size: int) -> Path:
    """Writes `<root>/blip_laion_cc_sbu_demo.json` and `<root>/images/...`; returns the json path."""
    images = root / "images"
    pairs = sample_records(num_samples, seed)
    for record, scene in pairs:
        path = images / record["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        render(scene, image_size).save(path, quality=95)
    json_path = root / "blip_laion_cc_sbu_demo.json"
    write_json(json_path, [r for r, _ in pairs])
    return json_path
