"""Feature files: the front-end's output for audio files and corpus folders, written as .npy /
.npz, and a PNG per file (waveform, spectrogram and features on one time axis). Used by
``kws-ghost features``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from kws_ghost.errors import KwsError

# The plot shows at most this much audio: a spectrogram of an hour-long file is unreadable anyway.
PLOT_MAX_SECONDS = 30.0


def plan_outputs(inputs: tuple[str, ...], out: Path, plot: bool = False) -> list[dict[str, Any]]:
    """Check every input and decide its output files before any work starts.

    Refused: an output that is one of the inputs, two inputs with the same output, a PNG (with
    ``plot``) where a file that is not a PNG already is, and a file where a folder must go.
    """
    from kws_ghost.fileio import (
        check_output_parent,
        check_png_output,
        module_available,
        refuse_overwriting_inputs,
    )

    if plot and not module_available("matplotlib"):
        raise KwsError(
            "--plot needs matplotlib, which is not installed: pip install 'kws-ghost[plot]'"
        )
    jobs: list[dict[str, Any]] = []
    claimed: dict[Path, str] = {}
    for name in inputs:
        path = Path(name)
        if not path.exists():
            raise KwsError(f"{path}: no such file or folder")
        if path.is_dir():
            clips = sorted(
                (p for p in path.rglob("*") if p.suffix.lower() == ".wav" and p.is_file()),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            if not clips:
                raise KwsError(f"{path}: no .wav files in this folder or below it")
            stem = path.resolve().name or "features"
            job = {"kind": "folder", "path": path, "clips": clips, "output": out / f"{stem}.npz"}
        else:
            job = {"kind": "file", "path": path, "output": out / f"{path.stem}.npy"}
        if job["output"] in claimed:
            raise KwsError(
                f"{claimed[job['output']]} and {path} would both write {job['output']}; "
                "run them with different --out folders"
            )
        claimed[job["output"]] = str(path)
        outputs = [job["output"]]
        if plot and job["kind"] == "file":
            outputs.append(check_png_output(job["output"].with_suffix(".png"), "--plot"))
        elif plot:  # PNGs go in a folder named after the .npz
            check_output_parent(job["output"].with_suffix("") / "x.png")
        check_output_parent(job["output"])
        refuse_overwriting_inputs(outputs, [path])
        jobs.append(job)
    return jobs


def features_of_file(path: Path, stream: Any, config: Any) -> Any:
    """Features of one file, read in blocks through the streaming front-end (bounded memory)."""
    import numpy as np

    from kws_ghost.audio import iter_audio_blocks

    stream.reset()
    parts = [stream.push(block) for block in iter_audio_blocks(path, config.sample_rate)]
    parts = [p for p in parts if p.shape[0]]
    if not parts:
        return np.zeros((0, config.num_features), np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def extract_file(job: dict[str, Any], stream: Any, config: Any, plot: bool) -> dict[str, Any]:
    import numpy as np

    from kws_ghost.fileio import atomic_path

    feats = features_of_file(job["path"], stream, config)
    with atomic_path(job["output"]) as tmp, open(tmp, "wb") as handle:
        np.save(handle, feats, allow_pickle=False)
    result: dict[str, Any] = {
        "type": "file",
        "input": str(job["path"]),
        "output": str(job["output"]),
        "kind": config.kind,
        "shape": list(feats.shape),
        "frames_per_second": config.frames_per_second,
    }
    if plot:
        png = job["output"].with_suffix(".png")
        plot_file(job["path"], png, config)
        result["plots"] = [str(png)]
    return result


def extract_folder(
    job: dict[str, Any],
    stream: Any,
    config: Any,
    plot: bool,
    max_plots: int,
    progress: Optional[bool] = None,
) -> dict[str, Any]:
    import zipfile

    import numpy as np
    from tqdm import tqdm

    from kws_ghost.fileio import atomic_path, check_png_output
    from kws_ghost.progress import progress_enabled

    root: Path = job["path"]
    frame_counts = []
    plots = []
    with atomic_path(job["output"]) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            bar = tqdm(
                job["clips"],
                desc=str(root),
                unit="clip",
                disable=not progress_enabled(progress),
                file=sys.stderr,
            )
            for clip in bar:
                key = clip.relative_to(root).as_posix()
                feats = features_of_file(clip, stream, config)
                # np.load(npz)[key] finds "<key>.npy" members, as np.savez writes them.
                with zf.open(key + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, feats, allow_pickle=False)
                frame_counts.append(int(feats.shape[0]))
                if plot and len(plots) < max_plots:
                    png = job["output"].with_suffix("") / Path(key).with_suffix(".png")
                    plot_file(clip, check_png_output(png, "--plot"), config)
                    plots.append(str(png))
    result: dict[str, Any] = {
        "type": "folder",
        "input": str(root),
        "output": str(job["output"]),
        "kind": config.kind,
        "clips": len(frame_counts),
        "frames_min": min(frame_counts),
        "frames_max": max(frame_counts),
        "num_features": config.num_features,
        "frames_per_second": config.frames_per_second,
    }
    if plot:
        result["plots"] = plots
    return result


def plot_file(path: Path, png: Path, config: Any) -> None:
    """Waveform, power spectrogram and features of (the first 30 s of) ``path`` in one PNG."""
    import numpy as np
    from matplotlib.figure import Figure

    from kws_ghost.audio import iter_audio_blocks
    from kws_ghost.fileio import PNG_METADATA, atomic_path
    from kws_ghost.frontend import features_from_power, frame_times, power_spectrogram

    limit = int(PLOT_MAX_SECONDS * config.sample_rate)
    blocks, total = [], 0
    for block in iter_audio_blocks(path, config.sample_rate):
        blocks.append(block[: limit - total])
        total += len(blocks[-1])
        if total >= limit:
            break
    audio = np.concatenate(blocks)
    power = power_spectrogram(audio, config)
    feats = features_from_power(power, config)
    duration = len(audio) / config.sample_rate

    fig = Figure(figsize=(10, 7.5), dpi=100)
    grid = fig.add_gridspec(3, 2, width_ratios=[1, 0.02], hspace=0.12, wspace=0.02)
    ax_wave = fig.add_subplot(grid[0, 0])
    ax_spec = fig.add_subplot(grid[1, 0], sharex=ax_wave)
    ax_feat = fig.add_subplot(grid[2, 0], sharex=ax_wave)
    fig.add_subplot(grid[0, 1]).set_axis_off()

    times = np.arange(len(audio)) / config.sample_rate
    if len(audio) > 20000:  # min/max envelope: decimating would alias away the peaks
        width = int(np.ceil(len(audio) / 5000))
        usable = len(audio) // width * width
        shaped = audio[:usable].reshape(-1, width)
        centre = times[:usable].reshape(-1, width).mean(axis=1)
        ax_wave.fill_between(centre, shaped.min(axis=1), shaped.max(axis=1), lw=0, color="C0")
    else:
        ax_wave.plot(times, audio, lw=0.6, color="C0")
    ax_wave.set_xlim(0, duration)
    ax_wave.set_ylim(-1.05, 1.05)
    ax_wave.set_ylabel("amplitude")
    shown = f"first {PLOT_MAX_SECONDS:g} s of " if total >= limit else ""
    ax_wave.set_title(
        f"{shown}{path.name}: {config.sample_rate} Hz, {config.window_ms:g} ms window, "
        f"{config.hop_ms:g} ms hop, {config.n_mels} mel bands {config.fmin:g}-"
        f"{config.fmax or config.sample_rate / 2:g} Hz",
        fontsize=10,
    )

    if len(feats):
        centres = frame_times(len(feats), config)
        half_hop = config.hop_length / config.sample_rate / 2
        extent_t = (centres[0] - half_hop, centres[-1] + half_hop)
        spec_db = 10 * np.log10(np.maximum(power, 1e-10))
        top = float(spec_db.max())
        image = ax_spec.imshow(
            spec_db.T,
            origin="lower",
            aspect="auto",
            extent=(*extent_t, 0, config.sample_rate / 2 / 1000),
            vmin=top - 80,
            vmax=top,
            cmap="magma",
            interpolation="nearest",
        )
        fig.colorbar(image, cax=fig.add_subplot(grid[1, 1]), label="dB")
        if config.kind == "mfcc":
            # c0 (overall level) dwarfs the rest: scale colours to c1.. so their shape shows.
            rest = np.abs(feats[:, 1:]) if feats.shape[1] > 1 else np.abs(feats)
            limit = float(np.percentile(rest, 99)) or 1.0
            colours = {"cmap": "coolwarm", "vmin": -limit, "vmax": limit}
            feat_label = "dB (c0 off scale)"
        else:
            colours = {"cmap": "viridis", "vmin": float(feats.max()) - 80, "vmax": None}
            feat_label = "dB"
        image = ax_feat.imshow(
            feats.T,
            origin="lower",
            aspect="auto",
            extent=(*extent_t, -0.5, feats.shape[1] - 0.5),
            interpolation="nearest",
            **colours,
        )
        fig.colorbar(image, cax=fig.add_subplot(grid[2, 1]), label=feat_label)
    else:
        for ax in (ax_spec, ax_feat):
            ax.text(
                0.5,
                0.5,
                f"shorter than one frame ({config.n_fft} samples)",
                ha="center",
                transform=ax.transAxes,
            )
        fig.add_subplot(grid[1, 1]).set_axis_off()
        fig.add_subplot(grid[2, 1]).set_axis_off()
    ax_spec.set_ylabel("frequency (kHz)")
    ax_feat.set_ylabel("MFCC index" if config.kind == "mfcc" else "mel band")
    ax_feat.set_xlabel("time (s)")
    for ax in (ax_wave, ax_spec):
        ax.tick_params(labelbottom=False)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", metadata=PNG_METADATA)
