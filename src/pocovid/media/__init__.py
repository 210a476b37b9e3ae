"""Reading recordings: videos, images and DICOM as RGB frames with timestamps."""

from pocovid.media.reader import (
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    MEDIA_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Frame,
    MediaError,
    MediaInfo,
    MediaReader,
    dicom_fps,
    media_kind_of,
    open_media,
    probe,
    read_frames,
    sample_frames,
    sample_indices,
    to_rgb8,
)

__all__ = [
    "DICOM_EXTENSIONS", "IMAGE_EXTENSIONS", "MEDIA_EXTENSIONS", "VIDEO_EXTENSIONS", "Frame", "MediaError",
    "MediaInfo", "MediaReader", "dicom_fps", "media_kind_of", "open_media", "probe", "read_frames",
    "sample_frames", "sample_indices", "to_rgb8",
]
