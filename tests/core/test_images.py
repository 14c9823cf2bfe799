"""One list of image extensions: what training reads from a folder, predict reads too."""

import numpy as np
from PIL import Image

from segdeploy.core.images import IMAGE_EXTENSIONS
from segdeploy.data.folders import list_files
from segdeploy.runtime.files import collect_images


def test_training_folders_and_predict_pick_up_the_same_image_files(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    for ext in IMAGE_EXTENSIONS:
        mode = "L" if ext in (".pgm", ".pbm") else "RGB"
        Image.fromarray(pixels).convert(mode).save(tmp_path / f"img{ext.upper()}")
    (tmp_path / "notes.txt").write_text("not an image")
    trained_on = list_files(tmp_path, IMAGE_EXTENSIONS)
    predicted = collect_images([tmp_path])
    assert len(trained_on) == len(IMAGE_EXTENSIONS)
    assert sorted(p.name for p in trained_on) == sorted(p.name for p in predicted)


def test_no_module_keeps_a_list_of_its_own():
    import segdeploy.data.folders as folders
    import segdeploy.runtime.files as files

    assert folders.IMAGE_EXTENSIONS is files.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
