"""The benchmark chart: p50 latency per case, ONNX Runtime (or OpenVINO) against PyTorch eager."""

from __future__ import annotations

from pathlib import Path

from segdeploy.core.publish import write_file
from segdeploy.tools.bench import BenchCase, eager_precision, engine_name


def draw_chart(cases: list[BenchCase], path: Path) -> Path:
    """A bar chart of p50 latency: per case, ONNX Runtime against PyTorch eager and the speedup.

    Each case is scaled on its own, so a 20 ms model stays readable beside a 500 ms one; the
    numbers are printed on the bars. Drawn with Pillow so that benchmarking needs no plotting
    library.
    """
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    colours = {"onnx": (31, 119, 180), "pytorch eager": (255, 127, 14)}
    label_w, bar_w, row_h, header_h, gap, top = 190, 560, 22, 24, 12, 44
    group_h = header_h + 2 * row_h + gap
    image = Image.new("RGB", (label_w + bar_w + 110, top + group_h * len(cases) + 8), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 12), "p50 latency per batch (ms), shorter is faster", fill="black", font=font)
    for i, case in enumerate(cases):
        y = top + i * group_h
        bound = "  io-binding" if case.io_binding else ""
        title = (
            f"{case.model.removesuffix('.onnx')}  {case.precision}  batch {case.batch}  "
            f"{case.height}x{case.width}  {case.provider}{bound}"
        )
        engine = engine_name(case.provider)
        if case.speedup:
            title += f"  |  {engine} {case.speedup:.2f}x the speed of eager"
        draw.text((10, y + 4), title, fill="black", font=font)
        bars = [(f"{engine} {case.precision}", "onnx", case.onnx.p50_ms)]
        if case.torch:
            eager = eager_precision(case.precision, case.provider)
            bars.append((f"pytorch eager {eager}", "pytorch eager", case.torch.p50_ms))
        longest = max(ms for _, _, ms in bars)
        for j, (label, engine, ms) in enumerate(bars):
            row_y = y + header_h + j * row_h
            draw.text((24, row_y + 3), label, fill=(60, 60, 60), font=font)
            width = max(1, int(bar_w * ms / longest))
            draw.rectangle(
                [label_w, row_y + 3, label_w + width, row_y + row_h - 3], fill=colours[engine]
            )
            draw.text((label_w + width + 6, row_y + 3), f"{ms:.1f}", fill="black", font=font)
    return write_file(path, lambda tmp: image.save(tmp, format="PNG"))
