"""Pictures a learner would rather look at than read: captioned image grids and curves."""

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from curriculum import cli

TILE = 160  # px: small images are upscaled (nearest) so shapes stay crisp


def _font(size=11):
    return ImageFont.load_default(size=size)


def text_tile(text, size=TILE):
    """A tile that shows a text query in place of an image."""
    tile = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(tile)
    draw.multiline_text((8, 8), "\n".join(textwrap.wrap(text, 22)), fill="black", font=_font(13))
    return tile


def image_grid(images, captions, out, cols=None, tile=TILE):
    """Tiles with a wrapped caption under each; written to `out` as PNG. Returns the path."""
    cols = cols or min(len(images), 8)
    rows = -(-len(images) // cols)
    lines = [textwrap.wrap(c, 26)[:6] for c in captions]
    text_h = 14 * max((len(x) for x in lines), default=0) + 6
    grid = Image.new("RGB", (cols * tile, rows * (tile + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(zip(images, lines)):
        x, y = (i % cols) * tile, (i // cols) * (tile + text_h)
        grid.paste(image.convert("RGB").resize((tile - 4, tile - 4), Image.NEAREST), (x + 2, y + 2))
        draw.multiline_text((x + 4, y + tile + 2), "\n".join(caption), fill="black", font=_font())
    return save_picture(grid, out)


def captioned_image(image, lines, out, width=480):
    """One image, upscaled, with a list of text lines under it (e.g. prompt -> caption)."""
    wrapped = [w for line in lines for w in textwrap.wrap(line, width // 7) or [""]]
    side = width // 2
    canvas = Image.new("RGB", (width, side + 16 * len(wrapped) + 12), "white")
    canvas.paste(image.convert("RGB").resize((side, side), Image.NEAREST), ((width - side) // 2, 4))
    ImageDraw.Draw(canvas).multiline_text((8, side + 10), "\n".join(wrapped), fill="black", font=_font(12), spacing=4)
    return save_picture(canvas, out)


def compare_rows(images, columns, out, thumb=96, width=300):
    """One row per image: the image, then a text cell per column ({header: [text per image]}, e.g.
    two libraries' captions); a row whose cells differ is printed in red. Written to `out` as PNG."""
    headers = list(columns)
    rows = [[columns[h][i] for h in headers] for i in range(len(images))]
    wrapped = [
        ["\n".join(w for part in cell.split("\n") for w in textwrap.wrap(part, width // 7)) for cell in row]
        for row in rows
    ]
    heights = [max(thumb, 16 * max(cell.count("\n") + 1 for cell in row) + 8) + 6 for row in wrapped]
    canvas = Image.new("RGB", (thumb + 12 + width * len(headers), 24 + sum(heights)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, header in enumerate(headers):
        draw.text((thumb + 12 + j * width, 4), header, fill="black", font=_font(14))
    y = 24
    for image, row, cells, height in zip(images, rows, wrapped, heights):
        canvas.paste(image.convert("RGB").resize((thumb, thumb), Image.NEAREST), (4, y))
        colour = "black" if len(set(row)) == 1 else "red"
        for j, cell in enumerate(cells):
            draw.multiline_text((thumb + 12 + j * width, y + 2), cell, fill=colour, font=_font(12), spacing=4)
        y += height
    return save_picture(canvas, out)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: files only, no window
    import matplotlib.pyplot as plt

    return plt


def save_picture(image, out):
    """A PIL image to `out`, whole or not at all (cli.atomic_paths). Returns the path."""
    with cli.atomic_paths(out) as temp:
        image.save(temp)
    return Path(out)


def _save_figure(fig, out):
    with cli.atomic_paths(out) as temp:
        fig.savefig(temp, dpi=100)
    _pyplot().close(fig)
    return Path(out)


def heatmap_overlays(image, maps, out, title):
    """The image, then one panel per (label, 2-D map): the map stretched over the image, semi-transparent."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(2.6 * (1 + len(maps)), 3.0))
    extent = (0, image.width, image.height, 0)
    axes[0].imshow(image)
    axes[0].set_title("generated", fontsize=9)
    for ax, (label, heat) in zip(axes[1:], maps):
        ax.imshow(image, extent=extent)
        ax.imshow(heat, cmap="jet", alpha=0.55, extent=extent, interpolation="bilinear")
        ax.set_title(label, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, out)


def curve(ys, out, title, xlabel="step", ylabel="loss"):
    """A line plot as PNG (matplotlib, headless)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(ys) + 1), ys)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, out)


def attention_figure(image, overlays, matrix, row_labels, col_labels, out, top_title, bottom_title):
    """Top: the image, then each (label, 2-D map) stretched over it. Bottom: an attention matrix,
    one row per query (row_labels) over the keys (col_labels)."""
    plt = _pyplot()
    cols = 1 + len(overlays)
    fig = plt.figure(figsize=(max(2.4 * cols, 0.32 * len(col_labels) + 2), 2.8 + 0.3 * len(row_labels) + 1.2))
    grid = fig.add_gridspec(2, cols, height_ratios=[2.4, 0.3 * len(row_labels) + 1.2])
    extent = (0, image.width, image.height, 0)
    for i, (label, heat) in enumerate([("image", None)] + list(overlays)):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(image, extent=extent)
        if heat is not None:
            ax.imshow(heat, cmap="jet", alpha=0.55, extent=extent, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.text(0.5, 0.98, top_title, ha="center", va="top", fontsize=10)
    ax = fig.add_subplot(grid[1, :])
    ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    ax.set_xlabel("attends to (image queries, then text)", fontsize=9)
    ax.set_ylabel("predicting", fontsize=9)
    ax.set_title(bottom_title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save_figure(fig, out)


def to_pil(chw):
    """A (3, H, W) tensor with values in [0, 1] as a PIL image."""
    return Image.fromarray((chw.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))


def lines(series, out, title, xlabel, ylabel):
    """Several curves ({label: ys}, x = 0, 1, …) on one plot, as PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, ys in series.items():
        ax.plot(range(len(ys)), ys, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save_figure(fig, out)


def curve_panels(panels, out, title, ylabel="loss", ylim=None):
    """Side-by-side panels of several curves each, one per (title, {label: ys}), sharing the y axis, as PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False, sharey=True)
    for ax, (name, series) in zip(axes[0], panels):
        for label, ys in series.items():
            ax.plot(range(1, len(ys) + 1), ys, label=label, linewidth=1)
        ax.set(title=name, xlabel="step", ylim=ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, out)


def precision_recall(panels, out, title):
    """One panel per {name: {label: [(recall, precision), ...] as a curve, or (recall, precision) as a point}}."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items()):
        for label, values in series.items():
            if isinstance(values, list):
                ax.plot(*zip(*values), marker=".", label=label)
            else:
                ax.plot(*values, marker="o", linestyle="none", markersize=9, label=label)
        ax.set(title=name, xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, out)


def grouped_bars(groups, out, title):
    """One group of bars per key of `groups` ({group: {series: value in [0, 1]}}), as PNG."""
    plt = _pyplot()
    names = list(groups)
    series = list(next(iter(groups.values())))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)), 4))
    for i, label in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(names))]
        ax.bar(xs, [groups[n][label] for n in names], width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set(title=title, ylim=(0, 1.05))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, out)


def panels(plots, out, title, logx=False):
    """Side-by-side line plots, one per (title, xs, ys, xlabel, ylabel), as PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(plots), figsize=(5 * len(plots), 3.6), squeeze=False)
    for ax, (name, xs, ys, xlabel, ylabel) in zip(axes[0], plots):
        ax.plot(xs, ys, marker="o")
        ax.set(title=name, xlabel=xlabel, ylabel=ylabel, ylim=(0, 1.02))
        if logx:
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, out)
