"""Pre-training data: schemas, converters (ShapeNet multi-view, ScanNet), built-in mini sets, the SweetHome3D sets,
view selection, transforms and collators.

Importing this package never imports pybullet or trimesh (only the builders need them, and import them when called).
"""

from .collators import CorruptSampleError, ObjectPretrainingCollator, ScenePretrainingCollator, decode_image
from .downstream import (
    PART_SEGMENTATION_FEATURES,
    convert_modelnet40,
    convert_pointcept_scenes,
    convert_scanobjectnn,
    convert_shapenet_part,
)
from .geometry import check_object_rows, check_scene_rows, silhouette_hits, unproject_depth_to_world
from .mini import OBJECT_MESHES, SCENE_CLASSES, build_objects_mini, build_scenes_mini, load_mini_dataset
from .rows import EpochSampler, NumpyRows, SeededRows, arrow_value_to_numpy
from .sampling import ObjectViewSampler, SceneViewSampler
from .scannet import convert_scannet, read_scannet_scene
from .schemas import (
    DEPTH_SCALE,
    OBJECT_FEATURES,
    SCENE_FEATURES,
    BuildSummary,
    ShardedParquetWriter,
    load_pretraining_dataset,
    write_dataset_card,
)
from .shapenet import convert_shapenet, list_shapenet_objects, read_shapenet_object, shapenet_split
from .sweethome3d import CLASSES as SWEETHOME3D_CLASSES
from .sweethome3d import ROOM_CLASSES as SWEETHOME3D_ROOM_CLASSES
from .sweethome3d import build_sweethome3d, classify_furniture, list_furniture
from .transforms import (
    SceneAugmentation,
    apply_rigid_transform,
    center_points_and_cameras,
    farthest_point_sample,
    random_object_rotation,
    shapenet_axis_remap,
)

__all__ = [
    "OBJECT_FEATURES",
    "SCENE_FEATURES",
    "DEPTH_SCALE",
    "BuildSummary",
    "ShardedParquetWriter",
    "write_dataset_card",
    "load_pretraining_dataset",
    "load_mini_dataset",
    "build_objects_mini",
    "build_scenes_mini",
    "OBJECT_MESHES",
    "SCENE_CLASSES",
    "convert_shapenet",
    "convert_modelnet40",
    "convert_scanobjectnn",
    "convert_shapenet_part",
    "convert_pointcept_scenes",
    "PART_SEGMENTATION_FEATURES",
    "list_shapenet_objects",
    "read_shapenet_object",
    "shapenet_split",
    "build_sweethome3d",
    "list_furniture",
    "classify_furniture",
    "SWEETHOME3D_CLASSES",
    "SWEETHOME3D_ROOM_CLASSES",
    "convert_scannet",
    "read_scannet_scene",
    "ObjectViewSampler",
    "SceneViewSampler",
    "ObjectPretrainingCollator",
    "ScenePretrainingCollator",
    "CorruptSampleError",
    "decode_image",
    "NumpyRows",
    "EpochSampler",
    "SeededRows",
    "arrow_value_to_numpy",
    "check_object_rows",
    "check_scene_rows",
    "silhouette_hits",
    "unproject_depth_to_world",
    "SceneAugmentation",
    "apply_rigid_transform",
    "center_points_and_cameras",
    "farthest_point_sample",
    "random_object_rotation",
    "shapenet_axis_remap",
]
