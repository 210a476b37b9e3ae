"""Synthetic lung-ultrasound clips written to real files, for tests and the demo.

    from pocovid.phantom import PhantomConfig, make_phantom, write_phantom
    p = write_phantom("covid.mp4", label="covid", n_frames=30, overlays=True)
    p.frames, p.mask, p.box, p.finding_frames, p.finding_masks

Formats: .mp4 .m4v .mov .mkv .avi .mpeg .mpg .webm .wmv .gif (video), .png .jpg .jpeg .bmp .tif
.tiff (first frame), .dcm (DICOM ultrasound, multi-frame unless n_frames == 1).
"""

from pocovid.phantom.generator import (
    LABELS,
    PROBES,
    Phantom,
    PhantomConfig,
    make_phantom,
)
from pocovid.phantom.writers import (
    DICOM_FORMATS,
    IMAGE_FORMATS,
    VIDEO_FORMATS,
    write_dicom,
    write_image,
    write_phantom,
    write_video,
)

__all__ = [
    "DICOM_FORMATS", "IMAGE_FORMATS", "LABELS", "PROBES", "VIDEO_FORMATS", "Phantom", "PhantomConfig",
    "make_phantom", "write_dicom", "write_image", "write_phantom", "write_video",
]
