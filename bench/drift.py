"""Drift watch: false alarms over a long clean stream and detection delay after shifts, with a real detector.

A small dense detector is trained by the real `heartwatch train` pipeline on synthetic beats (few epochs).
Its drift reference comes the way an export makes it: a ``ScoreSummary`` of validation-normal scores (fresh
synthetic normals, ``--reference_beats``) -> 1,000 quantiles -> ``drift_reference.json`` in the version
directory. The stream side is ``streaming.drift.DriftWatch`` fed batch by batch with ``Detector.score``
outputs, one topic, beats judged normal only (the default).

* Clean run: ``--clean_beats`` synthetic beats with ``--anomaly_fraction`` anomalies of every kind, no
  shift: alarms per window tested, at the watch's alpha and (same scores, extra monitors) at looser alphas.
  A 50,000-beat clean stream with more anomalies (``--richer_anomaly_fraction``) through a watch fed only
  beats judged normal and one fed *all* beats shows why the default is the former.
* Shifts: ``--pre_beats`` clean beats, then beats changed after the generator (its output is z-normalised,
  so these are changes of the signal reaching the detector): gain, baseline wander (a 0.1-0.5 Hz sinusoid
  of the given amplitude in z units, random phase), new white noise. Delay = stream beats (anomalies
  included) from the first shifted beat to the batch whose window raised the alarm; one row per shift,
  median and worst over ``--seeds``, "missed" when no alarm within ``--post_beats``.

    python bench/drift.py --clean_beats 400000 --seeds 5
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prometheus_client import CollectorRegistry  # noqa: E402

from models.detection import drift, summaries  # noqa: E402
from models.detection.detector import load_detector  # noqa: E402
from models.ecg import synthetic  # noqa: E402
from pipeline import train  # noqa: E402
from streaming.drift import DriftWatch  # noqa: E402

TOPIC = "beats"
SHIFTS = (("gain x1.1", "gain", 1.1), ("gain x1.25", "gain", 1.25), ("gain x0.8", "gain", 0.8),
          ("wander 0.3", "wander", 0.3), ("wander 1.0", "wander", 1.0),
          ("noise 0.05", "noise", 0.05), ("noise 0.15", "noise", 0.15))


def stream_chunks(count: int, anomaly_fraction: float, seed: int, chunk: int = 50_000):
    """``count`` synthetic beats (anomalies of every kind mixed in), yielded in chunks of ``chunk``."""
    for made in range(0, count, chunk):
        config = synthetic.SyntheticConfig(beats=min(chunk, count - made), anomaly_fraction=anomaly_fraction,
                                           seed=seed * 1000 + made // chunk)
        yield synthetic.generate(config)[0]


def stream_beats(count: int, anomaly_fraction: float, seed: int) -> np.ndarray:
    """``count`` synthetic beats in one array."""
    return np.concatenate(list(stream_chunks(count, anomaly_fraction, seed)))


def shifted(beats: np.ndarray, kind: str, amount: float, rng: np.random.Generator) -> np.ndarray:
    """The beats after a gain change, added baseline wander or added white noise."""
    if kind == "gain":
        return (beats * amount).astype(np.float32)
    if kind == "wander":
        times = synthetic.sample_times()
        frequencies = rng.uniform(0.1, 0.5, (len(beats), 1))
        phases = rng.uniform(0.0, 2 * np.pi, (len(beats), 1))
        return (beats + amount * np.sin(2 * np.pi * frequencies * times + phases)).astype(np.float32)
    return (beats + amount * rng.standard_normal(beats.shape)).astype(np.float32)


def train_detector(directory: str, beats: int, epochs: int) -> str:
    """Trains one dense candidate with the real pipeline on synthetic beats; returns the version directory."""
    result = train.run(["--data", f"synthetic:beats={beats},anomaly_fraction=0.3,seed=11", "--output_dir", directory,
                        "--candidates", "dense", "--epochs", str(epochs), "--verbose", "0", "--report", "false",
                        "--seed", "0"])
    return result.version_directory


def feed(watch: DriftWatch, detector, beats: np.ndarray, batch: int, monitors=()) -> list[tuple[int, dict]]:
    """Scores ``beats`` batch by batch into the watch (and extra monitors); returns (beats fed, record) per alarm."""
    alarms = []
    for start in range(0, len(beats), batch):
        scores = detector.score(beats[start:start + batch])
        for record in watch.observe_batch(detector, [TOPIC] * len(scores["anomaly_score"]), scores):
            alarms.append((start + len(scores["anomaly_score"]), record))
        for monitor in monitors:
            monitor.observe(scores["anomaly_score"])
    return alarms


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_beats", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--reference_beats", type=int, default=20_000)
    parser.add_argument("--clean_beats", type=int, default=400_000)
    parser.add_argument("--anomaly_fraction", type=float, default=0.05)
    parser.add_argument("--richer_anomaly_fraction", type=float, default=0.15,
                        help="anomaly share of a 50,000-beat clean stream fed both ways (judged normal / all)")
    parser.add_argument("--window", type=int, default=drift.DEFAULT_WINDOW)
    parser.add_argument("--alpha", type=float, default=drift.DEFAULT_ALPHA)
    parser.add_argument("--batch", type=int, default=100, help="beats per stream batch (delay resolution)")
    parser.add_argument("--pre_beats", type=int, default=5000)
    parser.add_argument("--post_beats", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--model", default=None, help="an existing detector version directory (skips training)")
    options = parser.parse_args(argv)

    started = time.time()
    version = options.model or train_detector(tempfile.mkdtemp(prefix="bench-drift-"), options.train_beats,
                                              options.epochs)
    detector = load_detector(version)
    print(f"detector {version} (threshold {detector.threshold:.4g}), trained in {time.time() - started:.0f} s")
    normals = synthetic.make_beats("normal", options.reference_beats, np.random.default_rng(100),
                                   synthetic.SyntheticConfig().noise_std)
    reference_scores = detector.score(normals, batch_size=4096)["anomaly_score"]
    summary = summaries.ScoreSummary.from_arrays(np.zeros(len(reference_scores), int), reference_scores)
    drift.write_reference(version, drift.reference_from_summary(summary))
    settings = {"window": options.window, "alpha": options.alpha}
    print(f"reference: {drift.DEFAULT_QUANTILES} quantiles of {options.reference_beats:,} validation-like normals; "
          f"window {options.window} beats judged normal, alpha {options.alpha:g}, batches of {options.batch}")

    watch = DriftWatch(CollectorRegistry(), **settings)
    reference = drift.read_reference(version)
    loose = [drift.DriftMonitor(reference, window=options.window, alpha=alpha, rearm_windows=1,
                                censor_above=detector.threshold) for alpha in (0.01, 0.001)]
    started, alarms = time.time(), []
    for chunk in stream_chunks(options.clean_beats, options.anomaly_fraction, seed=1):
        alarms += feed(watch, detector, chunk, 4096, loose)
    monitor = watch.monitors[TOPIC]
    print(f"\nclean run: {options.clean_beats:,} beats ({options.anomaly_fraction:.0%} anomalies),"
          f" {monitor.beats_tested:,} judged normal -> {monitor.windows_tested:,} windows,"
          f" {time.time() - started:.0f} s")
    print(f"{'monitor':<40}{'windows':>9}{'out of bounds':>15}{'per window':>12}{'alarms':>8}")
    print(f"{'DriftWatch alpha ' + format(options.alpha, 'g'):<40}{monitor.windows_tested:>9}{'':>15}{'':>12}"
          f"{len(alarms):>8}")
    for extra in loose:
        print(f"{'  same scores, alpha ' + format(extra.alpha, 'g'):<40}{extra.windows_tested:>9}{extra.alarms:>15}"
              f"{extra.alarms / extra.windows_tested:>12.4f}{'':>8}")
    richer = stream_beats(50_000, options.richer_anomaly_fraction, seed=2)
    for judged_normal_only in (True, False):
        other = DriftWatch(CollectorRegistry(), judged_normal_only=judged_normal_only, **settings)
        found = feed(other, detector, richer, 4096)
        name = f"{options.richer_anomaly_fraction:.0%} anomalies, " + ("judged normal" if judged_normal_only
                                                                     else "all beats fed")
        print(f"{name:<40}{other.monitors[TOPIC].windows_tested:>9}{'':>15}{'':>12}{len(found):>8}")

    print(f"\nshifts: {options.pre_beats:,} clean beats, then up to {options.post_beats:,} shifted "
          f"({options.anomaly_fraction:.0%} anomalies throughout), {options.seeds} seeds")
    print(f"{'shift':<14}{'detected':>10}{'median delay':>14}{'worst delay':>13}{'anomaly rate after':>20}")
    for name, kind, amount in SHIFTS:
        delays, rates = [], []
        for seed in range(options.seeds):
            rng = np.random.default_rng(seed)
            beats = stream_beats(options.pre_beats + options.post_beats, options.anomaly_fraction, seed=10 + seed)
            beats[options.pre_beats:] = shifted(beats[options.pre_beats:], kind, amount, rng)
            watch = DriftWatch(CollectorRegistry(), **settings)
            found = [fed - options.pre_beats for fed, _ in feed(watch, detector, beats, options.batch)
                     if fed > options.pre_beats]
            if found:
                delays.append(found[0])
            rates.append(float(np.mean(detector.score(beats[options.pre_beats:], batch_size=4096)["is_anomaly"])))
        median = f"{np.median(delays):,.0f}" if delays else "missed"
        worst = f"{max(delays):,}" if len(delays) == options.seeds else "missed"
        print(f"{name:<14}{len(delays):>6}/{options.seeds:<3}{median:>14}{worst:>13}{np.mean(rates):>20.3f}")


if __name__ == "__main__":
    main()
