"""img2img and inpainting as A1111 1.10 does them: resize modes, mask blur, "Only masked" crops, masked content,
the noise multiplier, the paste-back over the original, their infotext and their 422s (``modules.image_resize``,
``modules.masking``, ``modules.img2img_inputs``, the pipeline's start, the API and the UI's preparation)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from ui_form import form_values

from modules import image_resize, img2img_inputs, masking, processing, request_preparation, sd_pipeline

# -- resize modes ----------------------------------------------------------------------------------------------


def _columns(width: int, height: int) -> Image.Image:
    """Every column its own colour, so where a column lands tells how the image was placed."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[..., 0] = np.arange(width)[None, :] * 3
    arr[..., 1] = np.arange(height)[:, None] * 5
    return Image.fromarray(arr)


def test_resize_modes_place_the_image_as_a1111_does():
    wide = _columns(80, 40)
    assert image_resize.resize_image(0, wide, 40, 40).size == (40, 40)
    # Crop and resize: scaled to cover 80x40 (already), the middle 40 columns kept.
    cropped = image_resize.resize_image(1, wide, 80, 20 * 2 // 2 * 2)
    assert cropped.size == (80, 40) and cropped.tobytes() == wide.tobytes()
    cropped = image_resize.resize_image(1, wide, 40, 40)
    assert np.array_equal(np.asarray(cropped), np.asarray(wide)[:, 20:60])
    # Resize and fill: scaled to fit (40x20), centred; the bands above and below are its first and last rows.
    filled = np.asarray(image_resize.resize_image(2, wide, 40, 40)).astype(int)
    fitted = np.asarray(wide.resize((40, 20), Image.Resampling.LANCZOS)).astype(int)
    assert np.array_equal(filled[10:30], fitted)
    assert np.abs(filled[:10] - fitted[0][None]).max() <= 1 and np.abs(filled[30:] - fitted[-1][None]).max() <= 1
    # Tall into wide fills left and right instead.
    tall = np.asarray(image_resize.resize_image(2, _columns(20, 40), 40, 40)).astype(int)
    assert np.abs(tall[:, :10] - tall[:, 10:11]).max() <= 1 and np.abs(tall[:, 30:] - tall[:, 29:30]).max() <= 1
    with pytest.raises(ValueError, match="does not resize pixels"):
        image_resize.resize_image(3, wide, 40, 40)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(4, 90), st.integers(4, 90), st.integers(8, 90), st.integers(8, 90))
@example(3, 90, 4, 8, 8)  # fitted, the short side would scale to 0 pixels
@example(2, 4, 90, 8, 8)
def test_every_pixel_resize_mode_gives_the_asked_size(mode, src_w, src_h, width, height):
    image = Image.new("L", (src_w, src_h), 200)
    out = image_resize.resize_image(mode - 1, image, width, height)
    assert out.size == (width, height) and out.mode == "L"


# -- masks: blur, crop region, fill ----------------------------------------------------------------------------


def test_mask_blur_is_a1111s_gaussian_per_axis():
    from scipy import ndimage

    assert [masking.kernel_size(s) for s in (1, 4, 8)] == [7, 21, 41]
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (20, 10, 40, 30))
    for bx, by in ((4, 4), (3, 0), (0, 5)):
        out = np.asarray(masking.blur(mask, bx, by)).astype(int)
        # The same Gaussian from scipy's own kernel, truncated where A1111's kernel ends, reflected borders
        ref = np.asarray(mask, np.float64)
        for axis, sigma in ((1, bx), (0, by)):
            if sigma:
                radius = (masking.kernel_size(sigma) - 1) // 2
                ref = ndimage.gaussian_filter1d(ref, sigma, axis=axis, mode="mirror", truncate=radius / sigma)
        assert np.abs(out - ref).max() <= 1
        # Nothing spreads farther than the kernel's half width, nor along an axis that is not blurred
        ys, xs = np.nonzero(out)
        rx = (masking.kernel_size(bx) - 1) // 2 if bx else 0
        ry = (masking.kernel_size(by) - 1) // 2 if by else 0
        assert xs.min() >= 20 - rx and xs.max() < 40 + rx and ys.min() >= 10 - ry and ys.max() < 30 + ry
    assert masking.blur(mask, 0, 0).tobytes() == mask.tobytes()


def test_binary_mask_reads_alpha_rounded_or_not():
    rgba = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 100))
    rgba.putpixel((2, 0), (0, 0, 0, 200))
    assert np.asarray(masking.binary_mask(rgba)).ravel().tolist() == [0, 0, 255, 0]
    assert np.asarray(masking.binary_mask(rgba, round_alpha=False)).ravel().tolist() == [0, 100, 200, 0]
    assert np.asarray(masking.binary_mask(Image.new("RGB", (2, 1), (255, 255, 255)))).ravel().tolist() == [255, 255]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.integers(16, 200), st.integers(16, 200), st.data())
def test_only_masked_crop_holds_the_mask_and_its_padding_inside_the_image(image_w, image_h, data):
    x1 = data.draw(st.integers(0, image_w - 1))
    y1 = data.draw(st.integers(0, image_h - 1))
    x2 = data.draw(st.integers(x1 + 1, image_w))
    y2 = data.draw(st.integers(y1 + 1, image_h))
    pad = data.draw(st.integers(0, 64))
    width, height = data.draw(st.integers(1, 32)) * 8, data.draw(st.integers(1, 32)) * 8
    mask = Image.new("L", (image_w, image_h), 0)
    mask.paste(255, (x1, y1, x2, y2))
    padded = masking.crop_region(mask, pad)
    assert padded == (max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, image_w), min(y2 + pad, image_h))
    cx1, cy1, cx2, cy2 = masking.expand_crop_region(padded, width, height, image_w, image_h)
    assert 0 <= cx1 <= padded[0] and 0 <= cy1 <= padded[1]
    assert padded[2] <= cx2 <= image_w and padded[3] <= cy2 <= image_h
    # The grown side reaches the processing aspect ratio (to a pixel) unless the image is too small for it
    w, h = cx2 - cx1, cy2 - cy1
    grown_h = (padded[2] - padded[0]) / (padded[3] - padded[1]) > width / height
    if grown_h:
        assert h == image_h or abs(h - w * height / width) < 1
    else:
        assert w == image_w or abs(w - h * width / height) < 1
    assert masking.crop_region(Image.new("L", (8, 8), 0), pad) is None


def test_fill_takes_the_colours_around_the_mask_and_keeps_the_rest():
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32] = (220, 0, 0)
    arr[:, 32:] = (0, 0, 220)
    image = Image.fromarray(arr)
    mask = Image.new("L", (64, 32), 0)
    mask.paste(255, (26, 0, 38, 32))
    out = np.asarray(masking.fill(image, mask)).astype(int)
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], arr[keep])
    assert out[16, 27, 0] > out[16, 27, 2] and out[16, 37, 2] > out[16, 37, 0]


# -- the prepared inputs ---------------------------------------------------------------------------------------


def _noise_image(size=(64, 64), seed=3) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _square_mask(size=(64, 64), box=(24, 24, 40, 40)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def _img2img(**kw):
    fields = dict(prompt="a red circle", steps=2, width=64, height=64, seed=4, init_images=[_noise_image()],
                  mask=_square_mask(), denoising_strength=1.0, do_not_save_samples=True)
    return processing.StableDiffusionProcessingImg2Img(**dict(fields, **kw))


def test_only_masked_crops_to_the_region_and_writes_its_infotext(data_dir):
    p = _img2img(init_images=[_noise_image((96, 64))], mask=_square_mask((96, 64), (10, 20, 20, 30)), mask_blur=0,
                 inpaint_full_res_padding=6, inpainting_mask_invert=0, inpainting_fill=3)
    inputs = img2img_inputs.prepare(p)
    # bbox (10,20)-(20,30) plus 6 = (4,14)-(26,36): square already, so it stays
    assert inputs.paste_to == (4, 14, 22, 22) and inputs.images[0].size == (64, 64)
    assert inputs.params == {"Inpaint area": "Only masked", "Masked area padding": 6,
                             "Masked content": "latent nothing"}
    assert inputs.overlays[0].size == (96, 64)
    blank = img2img_inputs.prepare(_img2img(mask=Image.new("L", (64, 64), 0)))
    assert blank.mask is None and blank.overlays == () and "mask is blank" in blank.warnings[0]
    p = _img2img(mask_blur_x=2, mask_blur_y=3, inpainting_mask_invert=1, inpaint_full_res=False, inpainting_fill=1)
    assert p.mask_blur is None and img2img_inputs.prepare(p).params == {"Mask mode": "Inpaint not masked"}
    p.mask_blur = 5
    assert (p.mask_blur_x, p.mask_blur_y) == (5, 5)
    assert img2img_inputs.prepare(p).params == {"Mask mode": "Inpaint not masked", "Mask blur": 5}
    # A latent mask steers the latents (fitted to width x height); the paste-back keeps following the mask
    latent = _square_mask((32, 32), (0, 0, 8, 8))
    inputs = img2img_inputs.prepare(_img2img(latent_mask=latent, mask_blur=0, inpaint_full_res=False))
    plain = img2img_inputs.prepare(_img2img(mask_blur=0, inpaint_full_res=False))
    assert inputs.mask.tobytes() == latent.resize((64, 64), Image.Resampling.LANCZOS).tobytes()
    assert inputs.overlays[0].tobytes() == plain.overlays[0].tobytes()


def test_masked_content_sets_where_sampling_starts(real_model, data_dir):
    """1 encodes the original; 0 its filled pixels; 2 puts each image's seeded noise and 3 zeros in the mask."""
    factor = 2 ** (len(real_model.vae.config.block_out_channels) - 1)
    sigmas = torch.linspace(8.0, 0.0, 5)
    starts = {}
    for fill in range(4):
        p = _img2img(inpainting_fill=fill, mask_blur=0, inpaint_full_res=False, initial_noise_multiplier=0.5)
        p.init_seeds()
        request = p.sampling_request(p.all_prompts, p.all_negative_prompts, p.all_seeds, p.all_subseeds)
        noise = torch.ones((1, real_model.unet.config.in_channels, 64 // factor, 64 // factor))
        starts[fill] = sd_pipeline.prepare_img2img_latents(request, real_model, noise, sigmas, factor)
    repaint = starts[1].mask[0, 0] == 1
    assert repaint.any() and (starts[1].mask[0, 0][~repaint] == 0).all()  # rounded: 0 or 1
    original = sd_pipeline.images_to_latents([_noise_image()], real_model.vae, 64, 64, real_model.device,
                                             real_model.dtype).float()
    assert torch.equal(starts[1].init_latents, original)
    assert not torch.allclose(starts[0].init_latents, original)
    assert (starts[3].init_latents[..., repaint] == 0).all() and (starts[3].init_latents[..., ~repaint] != 0).any()
    seeded = sd_pipeline.initial_noise(noise.shape[1:], [4], [4], 0.0, real_model.device, "CPU")
    assert torch.allclose(starts[2].init_latents[..., repaint], seeded[..., repaint])
    # The noise multiplier scales the noise added at the first level
    first = float(starts[1].sigmas[0])
    assert torch.allclose(starts[1].latents - starts[1].init_latents, torch.full_like(original, 0.5 * first))


# -- end to end through the API --------------------------------------------------------------------------------


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _decoded(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


BODY = {"prompt": "a cat", "steps": 2, "seed": 11, "width": 64, "height": 64, "sampler_name": "Euler",
        "denoising_strength": 1.0}


@pytest.fixture
def inpaint_api(real_model, api_client):
    def post(**fields):
        r = api_client.post("/sdapi/v1/img2img", json=dict(BODY, **fields))
        assert r.status_code == 200, r.text
        return r.json()
    post.client = api_client
    return post


def test_outside_the_mask_the_result_is_the_original(inpaint_api):
    init, mask = _noise_image(), _square_mask()
    original, outside = np.asarray(init).astype(int), np.asarray(mask) == 0
    for area in (False, True):
        body = inpaint_api(init_images=[_b64(init)], mask=_b64(mask), mask_blur=0, inpaint_full_res=area,
                           inpainting_fill=1)
        out = _decoded(body["images"][0])
        assert np.array_equal(out[outside], original[outside]), area
        assert not np.array_equal(out[~outside], original[~outside])
    # Blurred: exact beyond the blur's reach (half the kernel of blur 4: 10 pixels around the square)
    out = _decoded(inpaint_api(init_images=[_b64(init)], mask=_b64(mask), mask_blur=4, inpaint_full_res=False)[
        "images"][0])
    far = np.ones((64, 64), bool)
    far[24 - 10:40 + 10, 24 - 10:40 + 10] = False
    assert np.array_equal(out[far], original[far]) and not np.array_equal(out, original)
    # "Only masked" returns the init image's size, whatever width x height the crop was sampled at
    wide = _noise_image((96, 64))
    body = inpaint_api(init_images=[_b64(wide)], mask=_b64(_square_mask((96, 64), (70, 10, 86, 26))),
                       inpaint_full_res_padding=4, mask_blur=0)
    out = _decoded(body["images"][0])
    assert out.shape == (64, 96, 3) and np.array_equal(out[:, :60], np.asarray(wide).astype(int)[:, :60])


def test_resize_modes_through_the_api(inpaint_api):
    wide = _b64(_noise_image((128, 64)))
    for mode in range(4):
        body = inpaint_api(init_images=[wide], resize_mode=mode, denoising_strength=0.3)
        assert _decoded(body["images"][0]).shape == (64, 64, 3)
        assert body["parameters"]["resize_mode"] == mode and body["warnings"] == []
    body = inpaint_api(init_images=[wide], latent_mask=_b64(_square_mask()))
    assert body["warnings"] == ["`latent_mask` was ignored: it acts only together with a `mask`"]


INPAINT = dict(mask_blur=3, inpainting_mask_invert=1, inpainting_fill=2, inpaint_full_res=True,
               inpaint_full_res_padding=8, initial_noise_multiplier=0.9)


def test_the_infotext_gives_back_the_same_inpainting(inpaint_api):
    init, mask = _b64(_noise_image()), _b64(_square_mask())
    first = inpaint_api(init_images=[init], mask=mask, **INPAINT)
    text = json.loads(first["info"])["infotexts"][0]
    for part in ("Denoising strength: 1.0", "Mask mode: Inpaint not masked", "Mask blur: 3",
                 "Inpaint area: Only masked", "Masked area padding: 8", "Masked content: latent noise",
                 "Noise multiplier: 0.9"):
        assert part in text
    # Only the images and the infotext: every other field comes from the text
    again = inpaint_api.client.post("/sdapi/v1/img2img", json={"init_images": [init], "mask": mask,
                                                                  "infotext": text}).json()
    params = again["parameters"]
    assert {k: params[k] for k in INPAINT if k != "initial_noise_multiplier"} == {
        k: v for k, v in INPAINT.items() if k != "initial_noise_multiplier"}
    assert params["override_settings"] == {"initial_noise_multiplier": 0.9}
    assert again["images"][0] == first["images"][0]


@pytest.mark.parametrize("field,value", [("resize_mode", 4), ("inpainting_fill", -1), ("mask_blur", -2),
                                         ("inpaint_full_res_padding", -8), ("initial_noise_multiplier", -1)])
def test_out_of_range_inpaint_fields_are_422_naming_them(real_model, api_client, field, value):
    r = api_client.post("/sdapi/v1/img2img", json=dict(BODY, init_images=[_b64(_noise_image())],
                                                       mask=_b64(_square_mask()), **{field: value}))
    assert r.status_code == 422, r.text
    assert list(r.json()["errors"]) == [{"mask_blur": "mask_blur_x"}.get(field, field)]


# -- the UI: the same fields from its controls and its paste ---------------------------------------------------


def test_ui_controls_and_paste_fill_the_same_fields(data_dir, fake_models):
    from modules.ui import img2img, paste

    text = ("a\nSteps: 3, Seed: 1, Size: 64x64, Denoising strength: 0.5, Mask blur: 3, Mask mode: Inpaint not "
            "masked, Masked content: latent noise, Inpaint area: Only masked, Masked area padding: 8")
    fields = paste.from_infotext(text, mode="img2img").fields
    controls = [fields[name] for name in ("mask_blur", "inpainting_mask_invert", "inpainting_fill",
                                          "inpaint_full_res", "inpaint_full_res_padding")]
    assert controls == [3, "Inpaint not masked", "latent noise", "Only masked", 8]
    assert "mask_blur" not in paste.from_infotext(text, mode="txt2img").fields
    assert img2img.inpaint_fields("Resize and fill", *controls) == dict(
        resize_mode=2, mask_blur=3, inpainting_mask_invert=1, inpainting_fill=2, inpaint_full_res=True,
        inpaint_full_res_padding=8)
    assert request_preparation.paste_infotext(text).fields["inpainting_fill"] == 2
    # Generate's path: the controls' labels become the processing object's fields, checked as the API's are
    p = img2img.make_p(["inpaint_upload", None, None, _noise_image(), _square_mask(), "Crop and resize", *controls],
                       form_values())
    assert (p.resize_mode, p.mask_blur_x, p.mask_blur_y, p.inpainting_mask_invert, p.inpainting_fill,
            p.inpaint_full_res, p.inpaint_full_res_padding) == (1, 3, 3, 1, 2, True, 8)
    with pytest.raises(request_preparation.RequestFieldError, match="inpaint_full_res_padding"):
        img2img.make_p(["inpaint_upload", None, None, _noise_image(), _square_mask(), "Just resize", 4,
                        "Inpaint masked", "original", "Whole picture", 2000], form_values())
    assert "Masked content" in paste.from_infotext(text.replace("latent noise", "sparkles"), "img2img").rejected[0]
