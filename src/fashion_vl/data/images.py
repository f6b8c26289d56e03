"""Reading images as the reference loader does: any of several extensions, converted to RGB."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyspng
import simplejpeg
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import get_worker_info

# Tried in this order after the path as written; the reference strips the extension and tries these.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# Larger images are skipped like corrupt ones (``data.max_image_pixels``): well above real fashion
# images (FashionGen 256x256, DeepFashion ~1 MP, VITON-HD 1024x768), well below a decompression bomb.
DEFAULT_MAX_PIXELS = 40_000_000


class ImageLoadError(RuntimeError):
    """An image is missing, cannot be decoded, or (``oversized``) has more pixels than the limit."""

    def __init__(self, path: Path | str, reason: str, oversized: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.oversized = oversized


def resolve_image(image_dir: Path, name: str) -> Path:
    """The file for ``name`` under ``image_dir``: as written, else its stem with each known suffix."""
    path = image_dir / name
    if path.is_file():
        return path
    stem = path.with_suffix("") if path.suffix.lower() in IMAGE_SUFFIXES else path
    for suffix in IMAGE_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            return candidate
    raise ImageLoadError(path, f"no such image (also tried {', '.join(IMAGE_SUFFIXES)})")


def open_image(
    path: Path | io.BytesIO, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: Path | str | None = None
) -> Image.Image:
    """``Image.open`` (the header only) with a pixel limit: an image with more than ``max_pixels``
    pixels (``None``: no limit of ours), or above Pillow's own decompression-bomb limit (twice
    ``Image.MAX_IMAGE_PIXELS``, 179 MP), raises :class:`ImageLoadError` with ``oversized`` set before
    anything is decoded. Pillow's warning for images above ``Image.MAX_IMAGE_PIXELS`` is silenced:
    ``max_pixels`` decides. ``name``: the file named in errors (default ``path``)."""
    name = path if name is None else name
    try:
        # (catch_warnings is not thread-safe: under fvl-data check's threads the "ignore" may outlive
        # the block, which only silences the same warning elsewhere)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as err:
        raise ImageLoadError(name, f"too large to decode ({err})", oversized=True) from err
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise oversized_error(name, width, height, max_pixels)
    return img


JPEG_MAGIC = b"\xff\xd8\xff"
SIMPLEJPEG_COLORSPACES = (
    "YCbCr",
    "Gray",
)  # where its RGB is Pillow's, bit for bit (tests/test_image_decoding.py)


def draft_scale(width: int, height: int, draft_size: tuple[int, int]) -> int:
    """The reduction Pillow's ``JpegImageFile.draft`` picks: the largest of 8, 4, 2 that keeps both
    sides at least ``draft_size`` ``(width, height)``, else 1 (no reduction)."""
    fits = min(width // draft_size[0], height // draft_size[1])  # 0 for an image smaller than that
    return next((s for s in (8, 4, 2) if fits >= s), 1)


def oversized_error(path: Path | str, width: int, height: int, max_pixels: int) -> ImageLoadError:
    return ImageLoadError(
        path,
        f"{width}x{height} pixels ({width * height / 1e6:.1f} MP) is above the limit of "
        f"{max_pixels / 1e6:g} MP (data.max_image_pixels)",
        oversized=True,
    )


def decode_jpeg(
    data: bytes,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    path: Path | str = "<bytes>",
) -> np.ndarray | None:
    """``uint8 [H, W, 3]`` RGB of a JPEG, by simplejpeg; ``None`` where it declines (CMYK, damaged
    files...) so that Pillow decides, as it always did.

    simplejpeg is libjpeg-turbo's TurboJPEG API without Pillow's per-file Python parsing: the same
    pixels as Pillow (accurate DCT, smooth chroma upsampling) at about twice the rate for 256 px
    files (``scripts/bench_data.py``). With ``draft_size`` it decodes at the reduction Pillow's
    ``draft`` would pick (:func:`draft_scale`), so both give the same pixels.
    """
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if max_pixels is not None and width * height > max_pixels:  # from the header: nothing decoded
            raise oversized_error(path, width, height, max_pixels)
        if colorspace not in SIMPLEJPEG_COLORSPACES:  # CMYK/YCCK: Pillow's own conversion to RGB
            return None
        if draft_size is None:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        scale = draft_scale(width, height, draft_size)
        return simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_width=-(-width // scale), min_height=-(-height // scale)
        )
    except ValueError:
        return None


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# PNG colour types (IHDR) whose 8-bit pixels pyspng gives as Pillow's ``convert("RGB")`` does, once
# grey is repeated over three channels and alpha dropped (tests/test_image_decoding.py); palette
# (3), grey+alpha (4, no libspng output format) and 16-bit files go to Pillow.
PNG_GREY, PNG_RGB, PNG_RGBA = 0, 2, 6
PYSPNG_COLOR_TYPES = {PNG_GREY: "L", PNG_RGB: "RGB", PNG_RGBA: "RGBA"}


def decode_png(data: bytes, max_pixels: int | None = None) -> np.ndarray | None:
    """``uint8 [H, W, 3]`` RGB of an 8-bit grey, RGB or RGBA PNG, by pyspng (libspng);
    ``None`` for any other PNG, or one it cannot decode, so that Pillow decides (and words the error).

    FashionGen's images are 256-px RGB PNGs: libspng decodes them about 3x faster than Pillow
    (``scripts/bench_data.py``), with the same pixels (PNG is lossless; neither applies gAMA).
    Images above ``max_pixels`` or Pillow's bomb warning size are left to Pillow's checks.
    """
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    pixels = int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
    if (max_pixels is not None and pixels > max_pixels) or pixels > (Image.MAX_IMAGE_PIXELS or pixels):
        return None  # :func:`open_image` refuses it from the same header, in the usual words
    bit_depth, color_type = data[24], data[25]
    if bit_depth != 8 or color_type not in PYSPNG_COLOR_TYPES:
        return None
    try:
        # the file's own format: libspng's conversions (tRNS to alpha...) are not Pillow's
        array = pyspng.load(data, format=PYSPNG_COLOR_TYPES[color_type])
    except RuntimeError:  # damaged: Pillow reads it again and names the problem
        return None
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:  # grey: Pillow's "L" to "RGB" repeats the value
        return np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3]) if array.shape[2] == 4 else array


def read_image(
    path: Path, draft_size: tuple[int, int] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Decode to a ``uint8 [3, H, W]`` RGB tensor.

    JPEGs go through :func:`decode_jpeg` (simplejpeg), 8-bit PNGs through :func:`decode_png`
    (pyspng); Pillow decodes every other format the reference accepts, and the files those two
    decline (torchvision 0.29 deprecates its own decoders). Decoding is complete here, so a
    truncated file fails now, not inside a transform.

    ``draft_size``: ``(width, height)`` the caller resizes to anyway. A JPEG at least twice as large
    in both sides is then decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (what Pillow's
    ``Image.draft`` does), never below ``draft_size``: 2-6x faster for large files; after the resize
    the pixels differ from a full decode by about one grey level on average (``docs/performance.md``).

    ``max_pixels``: an image with more pixels raises :class:`ImageLoadError` with ``oversized`` set,
    read from the header before anything is decoded (:func:`open_image`).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ImageLoadError(path, f"cannot read ({type(err).__name__}: {str(err)[:120]})") from err
    return decode_image(data, path, draft_size, max_pixels)


def decode_image(
    data: bytes,
    path: Path | str,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """:func:`read_image` of a file's bytes already read (``path`` names it in errors)."""
    if data[:3] == JPEG_MAGIC:
        array = decode_jpeg(data, draft_size, max_pixels, path)
    elif data[:8] == PNG_MAGIC:
        array = decode_png(data, max_pixels)
    else:
        array = None
    if array is None:
        try:
            with open_image(io.BytesIO(data), max_pixels, path) as img:
                if draft_size is not None and img.format == "JPEG":
                    img.draft("RGB", draft_size)
                img.load()
                array = np.array(img.convert("RGB"), dtype=np.uint8)
        except UnidentifiedImageError as err:  # its message names the in-memory buffer, not the file
            raise ImageLoadError(
                path, "cannot decode (UnidentifiedImageError: not an image format Pillow reads)"
            ) from err
        except (OSError, ValueError, SyntaxError) as err:
            raise ImageLoadError(path, f"cannot decode ({type(err).__name__}: {str(err)[:120]})") from err
    return torch.from_numpy(array).permute(2, 0, 1)


def load_image(
    image_dir: Path,
    name: str,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """:func:`read_image` of :func:`resolve_image`'s file. The name as written is read first, with no
    look-up: the usual case costs one ``open`` instead of a ``stat`` and an ``open``."""
    path = image_dir / name
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:  # missing (another extension?), a folder, unreadable: resolve_image decides
        return read_image(resolve_image(image_dir, name), draft_size, max_pixels)
    return decode_image(data, path, draft_size, max_pixels)


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[B, C, H, W]`` of ``[C, H, W]`` images, stored channels-last (NHWC; ``torch.channels_last``).

    The decoders give ``[H, W, C]`` pixels and the reader's ``[C, H, W]`` is a view of them, which crop
    and flip keep; stacking them in NHWC order copies each image as it lies, where ``torch.stack``
    would transpose every one to NCHW (64 views of 224 px: 1.2 ms against 10.3 ms,
    ``docs/performance.md``).
    The values and shape are ``torch.stack``'s; image encoders run channels-last anyway. In a
    DataLoader worker the batch is stacked straight into shared memory, as ``default_collate`` does,
    instead of being copied there when the worker hands it over.
    """
    if not images:
        return torch.empty(0)
    pixels = [image.permute(1, 2, 0) for image in images]
    out = None
    if get_worker_info() is not None:
        first = pixels[0]
        # torch's default_collate does the same (a private storage API: there is no public one)
        storage = first._typed_storage()._new_shared(len(pixels) * first.numel(), device=first.device)
        out = first.new(storage).view(len(pixels), *first.shape)
    return torch.stack(pixels, out=out).permute(0, 3, 1, 2)
