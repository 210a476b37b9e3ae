"""Finding the ultrasound scan region (convex fan or linear rectangle) and cropping / masking to it.

    region = scan_region_of("clip.mp4")          # or detect_scan_region(frames)
    crops = crop_frames(frames, region)          # same crop for every frame of the clip
    json.dump(region.to_dict(), f)               # saved next to the results
"""

from pocovid.region.detect import RegionParams, detect_scan_region
from pocovid.region.scan import ScanRegion, crop_frames
from pocovid.region.transforms import CropToScanRegion

__all__ = ["CropToScanRegion", "RegionParams", "ScanRegion", "crop_frames", "detect_scan_region",
           "scan_region_of"]

from pocovid.region.frames import (Clip, clip_region, iter_clip_frames, load_clip, resize_frame,  # noqa: E402
                                   scan_region_of)

__all__ += ["Clip", "clip_region", "iter_clip_frames", "load_clip", "resize_frame"]
