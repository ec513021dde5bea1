"""kshot.data: read image sources into one `Dataset`, decode images, and draw seeded few-shot selections."""

from kshot.data.challenge import (
    CHALLENGE_DOMAINS,
    clean_classname,
    make_raw_classname,
    read_challenge,
    split_domain,
    write_classes_txt,
    write_train_txt,
)
from kshot.data.coop_split import read_coop_split, write_coop_split
from kshot.data.dataset import Dataset, Item
from kshot.data.fewshot import (
    base_new_split,
    default_val_shots,
    read_shots_file,
    sample_k_shot,
    sample_val,
    select_classes,
    write_shots_file,
)
from kshot.data.imagefolder import read_flat_folder, read_image_folder
from kshot.data.images import ImageReadError, check_images, load_image
from kshot.data.listfile import (
    parse_list_file,
    read_classes_file,
    read_list_file,
    write_classes_file,
    write_dataset_list,
    write_list_file,
)
from kshot.data.paths import IMAGE_EXTENSIONS, MissingFilesError
from kshot.data.sources import LAYOUTS, detect_layout, load_dataset

__all__ = [
    "CHALLENGE_DOMAINS",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "Dataset",
    "ImageReadError",
    "Item",
    "MissingFilesError",
    "base_new_split",
    "check_images",
    "clean_classname",
    "default_val_shots",
    "detect_layout",
    "load_dataset",
    "load_image",
    "make_raw_classname",
    "parse_list_file",
    "read_challenge",
    "read_classes_file",
    "read_coop_split",
    "read_flat_folder",
    "read_image_folder",
    "read_list_file",
    "read_shots_file",
    "sample_k_shot",
    "sample_val",
    "select_classes",
    "split_domain",
    "write_classes_file",
    "write_classes_txt",
    "write_coop_split",
    "write_dataset_list",
    "write_list_file",
    "write_shots_file",
    "write_train_txt",
]
