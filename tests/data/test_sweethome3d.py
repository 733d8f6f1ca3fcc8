"""The SweetHome3D builder on a tiny fake ``.sh3f`` pack: a textured model, plain ones, a broken and a missing one."""

import io
import os
import zipfile

import numpy as np
import pytest

pytest.importorskip("pybullet")
pytest.importorskip("trimesh")

from PIL import Image  # noqa: E402

from unipre3d_hf.data import (  # noqa: E402
    ObjectPretrainingCollator,
    ScenePretrainingCollator,
    check_object_rows,
    check_scene_rows,
    decode_image,
    load_pretraining_dataset,
    unproject_depth_to_world,
)
from unipre3d_hf.data.sweethome3d import (  # noqa: E402
    CLASSES,
    ROOM_CLASSES,
    build_sweethome3d,
    classify_furniture,
    list_furniture,
    parse_properties,
)
from unipre3d_hf.rendering import Cameras  # noqa: E402

_CORNERS = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
_QUADS = ((0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3))


def _box_obj(size, material, textured: bool) -> str:
    """A box OBJ (y up, cm) whose 6 faces each map the whole texture when ``textured``."""
    lines = [f"mtllib {material}.mtl", f"usemtl {material}"]
    lines += [f"v {x:.4f} {y:.4f} {z:.4f}" for x, y, z in _CORNERS * np.asarray(size)]
    if textured:
        lines += ["vt 0 0", "vt 1 0", "vt 1 1", "vt 0 1"]
    for q in _QUADS:
        if textured:
            lines.append("f " + " ".join(f"{v + 1}/{k + 1}" for k, v in enumerate(q)))
        else:
            lines.append("f " + " ".join(str(v + 1) for v in q))
    return "\n".join(lines) + "\n"


def _texture_png() -> bytes:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:, :4] = (230, 20, 20)  # left half red, right half blue
    image[:, 4:] = (20, 20, 230)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# (key, name, category, creator, size in cm (w, h, d) of the OBJ, catalogue size (w, d, h), kind)
_MODELS = (
    ("redchair", "Chair", "Living room", "Ann \\u00c9l", (45, 90, 50), (45, 50, 90), "textured"),
    ("armchair", "Armchair", "Living room", "Bob", (80, 85, 75), (80, 75, 85), "green"),
    ("table", "Table", "Kitchen", "Cy", (120, 75, 80), (120, 80, 75), "green"),
    ("coffee", "Coffee table", "Living room", "Di", (90, 45, 60), (90, 60, 45), "green"),
    ("ruler", "Ruler", "Office", "Ed", (30, 2, 4), (30, 4, 2), "green"),
    ("broken", "Broken chair", "Living room", "Fay", None, (40, 40, 80), "broken"),
    ("missing", "Lost table", "Kitchen", "Gil", None, (100, 60, 70), "missing"),
)


def _make_pack(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "Test.sh3f")
    props = ["# a fake catalogue", "id=Test#Models", "name=Test pack", "license=CC0 for tests", ""]
    with zipfile.ZipFile(path, "w") as zf:
        for i, (key, name, category, creator, obj_size, dims, kind) in enumerate(_MODELS, start=1):
            props += [
                f"id#{i}=Test#{key}", f"name#{i}={name}", f"category#{i}={category}", f"creator#{i}={creator}",
                f"model#{i}=/test/{key}/{key}.obj", f"multiPartModel#{i}=true", f"width#{i}={dims[0]}",
                f"depth#{i}={dims[1]}", f"height#{i}={dims[2]}", "",
            ]  # fmt: skip
            if kind == "missing":
                continue
            if kind == "broken":
                zf.writestr(f"test/{key}/{key}.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n")  # no faces
                continue
            textured = kind == "textured"
            zf.writestr(f"test/{key}/{key}.obj", _box_obj(obj_size, key, textured))
            mtl = f"newmtl {key}\nKd 0.2 0.7 0.2\n" + ("map_Kd tex.png\n" if textured else "")
            zf.writestr(f"test/{key}/{key}.mtl", mtl)
            if textured:
                zf.writestr(f"test/{key}/tex.png", _texture_png())
        zf.writestr("PluginFurnitureCatalog.properties", "\n".join(props).encode("latin-1"))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("sh3d")
    source = _make_pack(str(root / "packs"))
    summaries = build_sweethome3d(
        str(root / "out"), source, views=4, image_size=64, num_points=256, rooms=2, frames=8, width=64, height=48,
        cls_points=128, seed=0, show_progress=False,
    )  # fmt: skip
    return root / "out", summaries


def test_properties_parser_and_class_map():
    props = parse_properties("# c\n! c\na=1\nb : two words\nc\\:d=x\\u00e9\\\n   y\nname#3 = Bar stool\n")
    assert props == {"a": "1", "b": "two words", "c:d": "x\u00e9y", "name#3": "Bar stool"}
    assert CLASSES[classify_furniture("Bar stool", "Kitchen")] == "chair"
    assert CLASSES[classify_furniture("Desk lamp", "Lights")] == "lamp"  # lamp before table
    assert CLASSES[classify_furniture("Glass door cabinet", "Kitchen")] == "cabinet"
    assert CLASSES[classify_furniture("Door", "Doors and windows")] == "door"
    assert CLASSES[classify_furniture("Male", "Characters")] == "person"
    assert classify_furniture("Toilet paper dispenser", "Bathroom") is None
    assert classify_furniture("Car model", "Bedroom") is None
    assert ROOM_CLASSES[:2] == ("wall", "floor") and len(CLASSES) == 15


def test_missing_source_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install sweethome3d-furniture"):
        list_furniture(str(tmp_path))


def test_catalogue_is_read(tmp_path):
    models, packs, bad = list_furniture(_make_pack(str(tmp_path)))
    assert [m.id for m in models] == sorted(f"Test#{k[0]}" for k in _MODELS) and bad == []
    chair = next(m for m in models if m.id == "Test#redchair")
    assert chair.creator == "Ann \u00c9l" and (chair.width, chair.depth, chair.height) == (0.45, 0.5, 0.9)
    assert packs == {"Test pack": "CC0 for tests"}


def _single_pack(folder: str, entries) -> str:
    """A pack of OBJ models given as (key, OBJ text, catalogue lines)."""
    os.makedirs(folder, exist_ok=True)
    props = ["id=Test#Extra", "name=Extra pack", "license=CC0 for tests", ""]
    with zipfile.ZipFile(os.path.join(folder, "Extra.sh3f"), "w") as zf:
        for i, (key, obj, lines) in enumerate(entries, start=1):
            props += [f"id#{i}=Extra#{key}", f"name#{i}={key}", f"model#{i}=/x/{key}/{key}.obj"]
            props += [f"{line.split('=')[0]}#{i}={line.split('=', 1)[1]}" for line in lines] + [""]
            zf.writestr(f"x/{key}/{key}.obj", obj)
        zf.writestr("PluginFurnitureCatalog.properties", "\n".join(props).encode("latin-1"))
    return folder


def test_catalogue_model_rotation_is_applied_before_sizing(tmp_path):
    from unipre3d_hf.data.sweethome3d import _load_parts

    # a tetrahedron lying in the OBJ (y up, cm): 30 along x, 2 along y, 60 along z; the catalogue stands it up with
    # modelRotation (x, y, z) -> (x, z, -y) (rows first) and sizes it 30 wide, 2 deep, 60 high
    tetra = "v 0 0 0\nv 30 0 0\nv 0 2 0\nv 0 0 60\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n"
    sizes = ["width=30", "depth=2", "height=60"]
    source = _single_pack(
        str(tmp_path / "packs"),
        [
            ("stood", tetra, [*sizes, "modelRotation=1 0 0 0 0 1 0 -1 0"]),
            ("plain", tetra, sizes),
            ("badrot", tetra, [*sizes, "modelRotation=1 0 0 0 1 0"]),
        ],
    )
    models, _, bad = list_furniture(source)
    assert [m.id for m in models] == ["Extra#plain", "Extra#stood"]
    assert bad == [("Extra#badrot", "modelRotation is not 9 numbers of an invertible matrix: '1 0 0 0 1 0'")]
    stood = next(m for m in models if m.id == "Extra#stood")
    assert stood.rotation == ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, -1.0, 0.0))
    parts = _load_parts(stood, str(tmp_path / "m"), str(tmp_path), "k")
    vertices = np.unique(np.concatenate([p.vertices for p in parts]).round(9), axis=0)
    # rotated (y up): (0,0,0), (30,0,0), (0,0,-2), (0,60,0) = catalogue size, scale 1; z up (x, -z, y); box centred in
    # x / y, base at z = 0; metres
    expected = np.array([[-0.15, -0.01, 0.0], [-0.15, -0.01, 0.6], [-0.15, 0.01, 0.0], [0.15, -0.01, 0.0]])
    np.testing.assert_allclose(vertices, expected, atol=1e-9)
    plain = _load_parts(models[0], str(tmp_path / "p"), str(tmp_path), "q")  # no rotation: stretched per axis
    assert not np.allclose(np.unique(np.concatenate([p.vertices for p in plain]).round(9), axis=0), expected)


def test_faces_are_drawn_from_both_sides(tmp_path):
    from unipre3d_hf.data.mini import _connect, _look_at, _render
    from unipre3d_hf.data.sweethome3d import _add_parts, _load_parts

    # one single-sided triangle (a leaf): pybullet's renderer culls it from behind unless it is doubled
    source = _single_pack(
        str(tmp_path / "packs"),
        [("leaf", "v 0 0 0\nv 40 0 0\nv 0 40 0\nf 1 2 3\n", ["width=40", "depth=1", "height=40"])],
    )
    (model,), _, _ = list_furniture(source)
    (part,) = _load_parts(model, str(tmp_path / "m"), str(tmp_path), "k")
    assert len(part.faces) == 2 and len(part.vertices) == 6
    np.testing.assert_array_equal(part.faces[1], part.faces[0][::-1] + 3)  # reversed winding on the copy
    np.testing.assert_allclose(part.normals[3:], -part.normals[:3])
    p, cid, _ = _connect()
    try:
        (body,) = _add_parts(p, cid, [part], 1.0, 0.0, [0.0, 0.0, -0.2], {})
        intr = np.array([40.0, 40.0, 16.0, 16.0])
        seen = []
        for eye in ([0.0, -1.5, 0.0], [0.0, 1.5, 0.0]):  # the front (-y) and the back
            _, _, seg = _render(p, cid, _look_at(np.array(eye), np.zeros(3)), intr, 32, 32, 0.1, 10.0)
            seen.append(int((seg == body).sum()))
        assert min(seen) > 20 and abs(seen[0] - seen[1]) <= 0.1 * max(seen)
    finally:
        p.disconnect(physicsClientId=cid)


def test_objects_and_cls_rows_splits_and_bad_models(built):
    out, summaries = built
    skipped = dict(summaries["objects"].skipped)
    assert set(skipped) == {"Test#broken", "Test#missing"}
    assert "no faces" in skipped["Test#broken"] and "failed to load" in skipped["Test#missing"]
    train = list(load_pretraining_dataset(str(out / "sweethome3d-objects"), split="train"))
    val = list(load_pretraining_dataset(str(out / "sweethome3d-objects"), split="validation"))
    assert len(train) + len(val) == 5 and len(val) == 2  # one held-out model per class with two models
    import datasets

    cls = datasets.load_dataset(str(out / "sweethome3d-cls"))
    assert cls["train"].features["label"].names == list(CLASSES)
    assert sorted(cls["test"]["id"]) == sorted(r["id"] for r in val)  # cls test models are never trained on
    assert {CLASSES[lab] for lab in cls["test"]["label"]} == {"chair", "table"} and len(cls["train"]) == 2
    by_id = {r["id"]: r for r in train + val}
    for row in cls["test"]:  # cls rows hold the FPS prefix of the objects row's points
        np.testing.assert_array_equal(np.asarray(row["points"], np.float32), by_id[row["id"]]["points"][:128])
    for row in train + val:
        pts = row["points"]
        assert pts.shape == (256, 3) and row["camera_to_world"].shape == (4, 4, 4) and len(row["images"]) == 4
        extent = pts.max(0) - pts.min(0)
        assert np.linalg.norm(extent) == pytest.approx(1.0, abs=0.03)  # ShapeNet's normalisation: diagonal 1
        assert np.abs((pts.max(0) + pts.min(0)) / 2).max() < 0.02  # box centred at the origin
        np.testing.assert_allclose(np.linalg.norm(row["camera_to_world"][:, :3, 3], axis=1), 1.75, rtol=1e-5)
    chair = next(r for r in train + val if r["id"] == "Test#redchair")
    size = chair["points"].max(0) - chair["points"].min(0)
    np.testing.assert_allclose(size / size.max(), np.array([45, 50, 90]) / 90, atol=0.03)  # catalogue w, d, h; z up
    colors = chair["colors"].astype(int)
    red = (colors[:, 0] > colors[:, 2] + 60).mean()
    blue = (colors[:, 2] > colors[:, 0] + 60).mean()
    assert red > 0.25 and blue > 0.25  # the texture's two halves, not the material's green
    card = (out / "sweethome3d-cls" / "README.md").read_text()
    assert "Ann \u00c9l" in card and "CC0 for tests" in card and "| 0 | chair | 1 | 1 |" in card
    batch = ObjectPretrainingCollator(num_points=128, point_sampling="first", seed=0)(train)
    assert batch["target_images"].shape == (len(train), 4, 3, 64, 64) and batch["points"].shape == (len(train), 128, 3)


def test_points_land_on_their_silhouettes(built):
    import torch

    out, _ = built
    rows = list(load_pretraining_dataset(str(out / "sweethome3d-objects"), split="train"))
    rows += list(load_pretraining_dataset(str(out / "sweethome3d-objects"), split="validation"))
    hits = []
    for row in rows:
        c2w, intr = torch.tensor(row["camera_to_world"])[None], torch.tensor(row["intrinsics"])[None]
        uv = Cameras.from_camera_to_world(c2w, intr, 64, 64).project(torch.tensor(row["points"])[None])[0][0]
        col, line = uv.floor().long().clamp(0, 63).unbind(-1)
        alpha = np.stack([np.asarray(decode_image(im))[..., 3] for im in row["images"]])
        hits.append(alpha[np.arange(len(alpha))[:, None], line.numpy(), col.numpy()] > 0)
    checked = check_object_rows(rows, tolerances=(0, 1))
    np.testing.assert_allclose([c["hit"][0] for c in checked], [h.mean() for h in hits])  # the same check
    assert [c["id"] for c in checked] == [r["id"] for r in rows]
    assert float(np.mean(hits)) > 0.99  # anti-aliased views (supersample=2); binary ones at pixel centres: ~0.96
    assert min(c["hit"][1] for c in checked) > 0.99  # the strict misses are within a pixel of a silhouette


def test_rooms_depth_unprojects_onto_labelled_cloud(built):
    import torch

    out, summaries = built
    assert summaries["rooms"].rows_written == {"train": 1, "validation": 1}
    rows = list(load_pretraining_dataset(str(out / "sweethome3d-rooms"), split="train"))
    rows += list(load_pretraining_dataset(str(out / "sweethome3d-rooms"), split="validation"))
    for row in rows:
        coords = torch.tensor(row["coords"], dtype=torch.float64)
        depth = torch.stack([torch.from_numpy(np.asarray(decode_image(d)).astype(np.float64)) for d in row["depths"]])
        points, valid = unproject_depth_to_world(
            depth / 1000.0, torch.tensor(row["camera_to_world"]), torch.tensor(row["intrinsics"])
        )
        assert valid.float().mean() > 0.9  # closed rooms
        dist = torch.cdist(points[valid][::9], coords).min(dim=1).values
        assert float(dist.median()) < 0.02
        segment, instance = row["segment"], row["instance"]
        assert {0, 1} <= set(np.unique(segment)) and segment.max() < len(ROOM_CLASSES)
        assert (instance[segment <= 1] == -1).all() and (instance >= 0).any()
        for inst in np.unique(instance[instance >= 0]):  # an instance is one object: one class
            assert len(np.unique(segment[instance == inst])) == 1
        assert set(np.unique(segment[instance >= 0])) <= {2 + CLASSES.index("chair"), 2 + CLASSES.index("table")}
    checked = check_scene_rows(rows, max_pixels=1000)
    assert all(c["median_distance"] < 0.02 and c["valid_fraction"] > 0.9 for c in checked)
    assert all(c["classes_per_instance"] == 1 and c["unlabelled_instances"] == 0 for c in checked)
    for row, c in zip(rows, checked):
        assert len(c["instance_segments"]) == len(np.unique(row["instance"][row["instance"] >= 0]))
    batch = ScenePretrainingCollator(seed=0)(rows)
    assert batch["reference_depths"].shape[:2] == (2, 8) and batch["reference_depths"].max() > 0.5


def test_rebuild_needs_overwrite_and_keeps_the_old_set(built):
    out, _ = built
    source = str(out.parent / "packs")
    before = sorted(os.listdir(out / "sweethome3d-cls" / "data"))
    with pytest.raises(FileExistsError, match="overwrite"):
        build_sweethome3d(str(out), source, only=("cls",), views=2, image_size=32, num_points=64, show_progress=False)
    assert sorted(os.listdir(out / "sweethome3d-cls" / "data")) == before
    with pytest.raises(ValueError, match="only"):
        build_sweethome3d(str(out), source, only=("meshes",), show_progress=False)
