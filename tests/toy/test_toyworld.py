import random

import numpy as np
import pytest

from helpers.toy import world as tw


def test_same_seed_same_pixels_and_caption():
    a, b = tw.random_sample(7), tw.random_sample(7)
    assert a.caption == b.caption
    assert np.array_equal(np.asarray(tw.render(a.scene, seed=7)), np.asarray(tw.render(b.scene, seed=7)))


def test_different_seeds_differ():
    imgs = [np.asarray(tw.render(tw.random_sample(s).scene, seed=s)) for s in range(5)]
    assert all(not np.array_equal(imgs[0], other) for other in imgs[1:])


def test_render_is_64px_rgb_and_128px_on_request():
    scene = tw.random_sample(3).scene
    assert tw.render(scene).size == (64, 64) and tw.render(scene).mode == "RGB"
    assert tw.render(scene, size=128).size == (128, 128)


def test_caption_names_the_class_and_labels_match_the_instance():
    for seed in range(200):
        s = tw.random_sample(seed)
        inst = s.scene.objects[0].instance
        assert inst.cls in s.caption.split()
        assert tw.CLASSES[s.labels["class"]] == inst.cls
        assert tw.COLOUR_NAMES[s.labels["colour"]] == inst.colour
        wanted = tw.parse_prompt(s.caption)
        assert wanted["class"] == inst.cls
        assert wanted["colour"] in (None, inst.colour)
        assert wanted["background"] in (None, s.scene.background)


def test_class_prompts_have_variety():
    colours = {tw.random_sample(s).scene.objects[0].instance.colour for s in range(300)}
    backgrounds = {tw.random_sample(s).scene.background for s in range(300)}
    assert colours == set(tw.COLOUR_NAMES) and backgrounds == set(tw.BACKGROUNDS)


def test_every_background_plain_included_is_named_in_about_60_percent_of_its_captions():
    # An unnamed plain background made the plain one a third of all captions that name no background,
    # and a bare prompt ("a photo of a white cat") drew it on grey most of the time.
    samples = [tw.random_sample(s) for s in range(3000)]
    for background in tw.BACKGROUNDS:
        captions = [s.caption for s in samples if s.scene.background == background]
        named = sum(c.endswith(tw.BACKGROUND_PHRASES[background]) for c in captions) / len(captions)
        assert 0.52 < named < 0.68, (background, named)


def test_named_instances_are_fixed_rare_tokens_and_never_sks():
    names = tw.named_instances()
    assert names == tw.named_instances() and len(names) == 48
    assert "sks" not in names and set(names) <= set(tw.rare_tokens())
    samples = [tw.random_sample(s, names) for s in range(1000)]
    bound = [s for s in samples if s.name in names]
    stray = [s for s in samples if s.name and s.name not in names]
    assert 0.1 < len(bound) / len(samples) < 0.2 and 0.02 < len(stray) / len(samples) < 0.08
    for s in bound:
        assert s.caption.startswith(f"a photo of {s.name} {names[s.name].cls}")
        assert s.scene.objects[0].instance == names[s.name]
    assert {s.name for s in stray} <= set(tw.rare_tokens())


def test_rare_tokens_are_short_and_unknown_to_the_toy_vocabulary():
    rare = tw.rare_tokens()
    assert len(rare) == 256 and "sks" in rare
    assert all(len(t) == 3 for t in rare) and not set(rare) & set(tw.vocabulary_words())


def test_object_mask_sits_where_the_position_says():
    for seed in range(50):
        s = tw.random_sample(seed)
        _, labels = tw.render_with_mask(s.scene, seed=seed)
        xs = np.nonzero(labels == 1)[1]
        assert len(xs) > 8
        centre = xs.mean() / 64
        if s.position == "left":
            assert centre < 0.5
        elif s.position == "right":
            assert centre > 0.5


def test_subject_views_show_the_same_instance_differently():
    inst = tw.random_instance(random.Random(0), cls="dog")
    views = tw.subject_views(inst, 5, seed=1)
    assert len(views) == 5
    arrays = [np.asarray(v) for v in views]
    assert all(not np.array_equal(arrays[0], a) for a in arrays[1:])


@pytest.mark.parametrize("kind", ["outline", "edges", "layout"])
def test_structure_images_are_binary_sketches(kind):
    scene = tw.random_sample(11).scene
    arr = np.asarray(tw.render_structure(scene, kind))
    assert arr.shape == (64, 64, 3)
    assert set(np.unique(arr)) <= {0, 255}
    assert 0 < (arr > 0).mean() < 0.5


def test_unknown_structure_kind_is_named():
    with pytest.raises(ValueError, match="unknown structure kind 'depth'"):
        tw.render_structure(tw.random_sample(0).scene, "depth")


def test_parse_prompt():
    assert tw.parse_prompt("A photo of a big RED dog on the left") == {
        "class": "dog",
        "colour": "red",
        "position": "left",
        "background": None,
    }
    assert tw.parse_prompt("a photo of sks sunglasses in the snow") == {
        "class": "sunglasses",
        "colour": None,
        "position": None,
        "background": "snow",
    }


def test_emblems_appear_only_in_detailed_renders_and_only_inside_their_box():
    inst = tw.Instance("dog", "brown", "white", "plain", emblem="star", emblem_colour="blue")
    placed = tw.Placed(inst, x=0.5, y=0.55, size=0.6)
    plain_scene = tw.Scene((tw.Placed(tw.Instance("dog", "brown", "white", "plain"), 0.5, 0.55, 0.6),))
    scene = tw.Scene((placed,))
    assert np.array_equal(np.asarray(tw.render(scene, 128)), np.asarray(tw.render(plain_scene, 128)))
    detailed = np.asarray(tw.render(scene, 128, detail=True)).astype(int)
    changed = np.any(detailed != np.asarray(tw.render(scene, 128)), axis=-1)
    x0, y0, x1, y1 = tw.emblem_box(placed, 128)
    ys, xs = np.nonzero(changed)
    assert len(xs) > 8
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
    blue = detailed[changed].mean(axis=0)
    assert blue[2] > blue[0] + 60  # the changed pixels are the blue emblem


def test_committed_subject_photos_are_the_downsampled_originals():
    from pathlib import Path

    from PIL import Image

    data = Path(__file__).resolve().parents[2] / "data"
    for name, instance in tw.SUBJECTS.items():
        originals = tw.subject_views(instance, tw.SUBJECT_VIEWS[name], size=128, detail=True)
        for k, original in enumerate(originals):
            committed = Image.open(data / "subjects-128" / name / f"{k:02d}.png").convert("RGB")
            small = Image.open(data / "subjects" / name / f"{k:02d}.png").convert("RGB")
            assert np.array_equal(np.asarray(committed), np.asarray(original))
            assert np.array_equal(np.asarray(small), np.asarray(original.resize((64, 64), Image.Resampling.BOX)))


def test_new_subject_photos_show_the_subject_in_poses_its_photos_do_not():
    from pathlib import Path

    from PIL import Image

    data = Path(__file__).resolve().parents[2] / "data" / "subjects" / "toy_dog"
    committed = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(data.glob("*.png"))]
    fresh = tw.new_subject_photos("toy_dog", 4, seed=3)
    assert [im.size for im in fresh] == [(64, 64)] * 4
    assert not any(np.array_equal(np.asarray(f), c) for f in fresh for c in committed)
    assert np.array_equal(np.asarray(tw.new_subject_photos("toy_dog", 1, seed=0)[0]), committed[0])


def test_class_views_draw_only_that_class_in_varied_colours_and_places():
    scenes = tw.class_scenes("cup", 40, seed=2)
    assert {sc.objects[0].instance.cls for sc in scenes} == {"cup"}
    assert len({sc.objects[0].instance.colour for sc in scenes}) >= 6
    assert len({sc.background for sc in scenes}) == len(tw.BACKGROUNDS)
    views = tw.class_views("cup", 3, seed=2)
    assert np.array_equal(np.asarray(views[1]), np.asarray(tw.render(scenes[1], seed=2001)))


def test_prompts_take_the_article_english_wants_and_parse_back():
    assert tw.prompt_for("car", "orange") == "a photo of an orange car"
    assert tw.prompt_for("sunglasses", "pink", "left") == "a photo of pink sunglasses on the left"
    assert tw.prompt_for("dog") == "a photo of a dog"
    for cls in tw.CLASSES:
        for colour in tw.COLOUR_NAMES:
            wanted = {"class": cls, "colour": colour, "position": "right", "background": None}
            assert tw.parse_prompt(tw.prompt_for(cls, colour, "right")) == wanted


def test_subject_captions_name_the_scene_each_committed_photo_shows(judge):
    from helpers.core.images import load_image_folder
    from helpers.core.paths import ROOT
    from helpers.toy.judge import judge_images

    captions = tw.subject_captions("toy_dog", "sks")
    assert captions[2] == "a photo of sks dog in a room" and len(captions) == 5
    seen = judge_images(judge, load_image_folder(ROOT / "data" / "subjects" / "toy_dog")).labels["background"]
    assert [tw.parse_prompt(c)["background"] for c in captions] == seen
