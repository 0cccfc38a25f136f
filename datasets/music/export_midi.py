#!/usr/bin/env python3
"""Export the Bach chorales of the music21 corpus as augmented General MIDI files.

Usage: export_midi.py OUT_DIR [--limit N] [--variants K] [--seed S] [--force]

Writes OUT_DIR/{train,val,test}/<piece>_v<k>.mid and OUT_DIR/manifest.json
(see README.md beside this file). Every written file is re-read with an
independent Standard MIDI File parser and checked (one channel per voice, the
chosen program change on it, the transposed notes, the tempo) before it is
accepted. All logging goes to stderr; nothing is printed to stdout.

music21 is imported lazily so that a cache hit (manifest with the same
arguments and the same exporter) returns at once.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import time

FORMAT = "blockdiff-music-midi/1"
MUSIC21_VERSION = "10.5.1"
SOURCE = f"music21 {MUSIC21_VERSION} corpus (Bach chorales)"

TRANSPOSE_MIN, TRANSPOSE_MAX = -5, 6  # semitones, inclusive
DEFAULT_TEMPO_RANGE = (70, 100)  # quarter-note BPM, inclusive, when the score has none
MARKED_TEMPO_RANGE = (40.0, 200.0)  # a marked tempo outside this is ignored
VELOCITY_RANGE = (80, 100)  # inclusive, one value per voice per variant
SAME_PROGRAM_PROB = 0.25  # chance that all voices share one program ("organ chorale")

# General MIDI programs (0-based) that sound good on chorale voices.
GM_NAMES = {
    0: "Acoustic Grand Piano", 1: "Bright Acoustic Piano", 4: "Electric Piano 1",
    6: "Harpsichord", 11: "Vibraphone", 19: "Church Organ", 20: "Reed Organ",
    21: "Accordion", 24: "Acoustic Guitar (nylon)", 40: "Violin", 41: "Viola",
    42: "Cello", 43: "Contrabass", 48: "String Ensemble 1", 52: "Choir Aahs",
    56: "Trumpet", 57: "Trombone", 60: "French Horn", 64: "Soprano Sax",
    68: "Oboe", 70: "Bassoon", 71: "Clarinet", 73: "Flute", 74: "Recorder",
}
ALL_PROGRAMS = sorted(GM_NAMES)
# Per voice role: drop instruments whose real range does not reach the voice.
PROGRAMS_BY_ROLE = {
    "soprano": [p for p in ALL_PROGRAMS if p not in (43, 57, 70)],
    "alto": [p for p in ALL_PROGRAMS if p not in (43, 70)],
    "tenor": [p for p in ALL_PROGRAMS if p not in (40, 43, 64, 68, 73, 74)],
    "bass": [0, 1, 4, 6, 19, 20, 21, 24, 42, 43, 48, 52, 57, 60, 70],
}
# Programs usable on every voice: candidates for the "all voices alike" draw.
COMMON_PROGRAMS = sorted(set.intersection(*(set(v) for v in PROGRAMS_BY_ROLE.values())))

VOICE_ROLES = ("soprano", "alto", "tenor", "bass")
SOURCE_EXT_PREFERENCE = (".mxl", ".xml", ".musicxml", ".krn")  # first wins on duplicates
SPLITS = ("train", "val", "test")
TEST_FRACTION, VAL_FRACTION = 0.10, 0.05


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def exporter_sha256() -> str:
    with open(os.path.abspath(__file__), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def atomic_write(path: str, data: bytes) -> None:
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def piece_id(corpus_rel: str) -> str:
    """'bach/bwv1.6.mxl' -> 'bwv1.6' (filesystem safe)."""
    stem = os.path.basename(corpus_rel)
    for ext in SOURCE_EXT_PREFERENCE:
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem)


def group_id(pid: str) -> str:
    """Versions of one chorale ('bwv248.23-2', 'bwv248.23-s') share a group and a split."""
    return pid.split("-", 1)[0]


# --------------------------------------------------------------------------- corpus


def list_candidates():
    """All Bach score files in the corpus, one per piece id, sorted by corpus path."""
    from music21 import corpus

    base = None
    by_id = {}
    for p in corpus.getComposer("bach"):
        p = str(p)
        ext = os.path.splitext(p)[1].lower()
        if ext not in SOURCE_EXT_PREFERENCE:
            continue  # e.g. the Roman-numeral analyses (.rntxt)
        norm = p.replace(os.sep, "/")
        i = norm.rfind("/bach/")
        rel = norm[i + 1:] if i >= 0 else "bach/" + os.path.basename(norm)
        if base is None and i >= 0:
            base = norm[:i]
        pid = piece_id(rel)
        old = by_id.get(pid)
        if old is None or SOURCE_EXT_PREFERENCE.index(ext) < SOURCE_EXT_PREFERENCE.index(
            os.path.splitext(old[0])[1].lower()
        ):
            by_id[pid] = (rel, p)
    return sorted(((rel, pid, path) for pid, (rel, path) in by_id.items()), key=lambda t: t[0])


def voice_role(part) -> str | None:
    name = (part.partName or part.id or "").strip().lower()
    m = re.match(r"[a-z]+", name)
    word = m.group(0) if m else ""
    return word if word in VOICE_ROLES else None


def load_chorale(path: str):
    """Parse a corpus file and keep its vocal (SATB) parts.

    Returns (score, roles, marked_tempo_or_None) or raises ValueError when the
    piece is not a four/five-voice chorale.
    """
    from music21 import converter, stream, tempo

    score = converter.parse(path)
    if not isinstance(score, stream.Score):
        raise ValueError("not a score")
    parts = list(score.parts)
    roles = [voice_role(p) for p in parts]
    keep = [(p, r) for p, r in zip(parts, roles) if r is not None]
    kept_roles = [r for _, r in keep]
    if set(kept_roles) != set(VOICE_ROLES) or not 4 <= len(keep) <= 5:
        names = [p.partName for p in parts]
        raise ValueError(f"not an SATB chorale (parts: {names})")
    marked = None
    for mm in score.recurse().getElementsByClass(tempo.MetronomeMark):
        bpm = mm.getQuarterBPM() if (mm.number or mm.numberSounding) else None
        if bpm and MARKED_TEMPO_RANGE[0] <= bpm <= MARKED_TEMPO_RANGE[1]:
            marked = float(bpm)
            break
    for p in parts:
        if voice_role(p) is None:
            score.remove(p)
    return score, kept_roles, marked


def prepare_score(score):
    """Expand repeats and strip tempo marks and instruments (we set our own)."""
    from music21 import instrument, stream, tempo

    if score[stream.Measure] or any(p[stream.Measure] for p in score.parts):
        score = score.expandRepeats()
    for cls in (tempo.MetronomeMark, tempo.TempoIndication, instrument.Instrument):
        for el in list(score.recurse().getElementsByClass(cls)):
            site = el.activeSite
            if site is not None:
                site.remove(el)
    return score


def expected_notes(part, transpose: int) -> list[int]:
    """Sorted MIDI note numbers that a MIDI rendering of `part` must start."""
    out = []
    for n in part.recurse().notes:
        if n.duration.quarterLength == 0:  # grace notes are not written to MIDI
            continue
        for p in n.pitches:
            tie = None
            if hasattr(n, "getTie"):
                try:
                    tie = n.getTie(p)
                except Exception:
                    tie = n.tie
            else:
                tie = n.tie
            if tie is not None and tie.type in ("stop", "continue"):
                continue
            out.append(int(round(p.ps)) + transpose)
    return sorted(out)


def reference_notes(prepared, roles) -> list[list[int]]:
    """Per-voice sorted note numbers of an untransposed rendering of `prepared`.

    Each variant must reproduce these exactly, shifted by its transposition. The
    reference itself is checked loosely against the notes read off the score: tie
    handling at repeat and volta boundaries (and the odd dangling tie in the
    encodings) legitimately differs by a note or two.
    """
    var = {"transpose": 0, "programs": [0] * len(roles), "velocities": [90] * len(roles),
           "channels": [channel_for(i) for i in range(len(roles))], "tempo_bpm": 90.0}
    _, tracks = parse_smf(render_midi(prepared, var))
    note_tracks = [t for t in tracks if any(e[1] == "on" for e in t)]
    if len(note_tracks) != len(roles):
        raise AssertionError(f"reference rendering has {len(note_tracks)} note tracks")
    ref = [sorted(e[3] for e in t if e[1] == "on") for t in note_tracks]
    for k, part in enumerate(prepared.parts):
        want = expected_notes(part, 0)
        diff = sum((collections.Counter(want) - collections.Counter(ref[k])).values()) + sum(
            (collections.Counter(ref[k]) - collections.Counter(want)).values())
        if diff > max(2, len(want) // 50):
            raise AssertionError(f"voice {k}: MIDI has {len(ref[k])} notes, score {len(want)} ({diff} differ)")
    return ref


# --------------------------------------------------------------------------- variants


def channel_for(voice_index: int) -> int:
    """0-based MIDI channel for a voice, skipping 9 (GM drums)."""
    return voice_index if voice_index < 9 else voice_index + 1


def draw_variant(seed: int, pid: str, variant: int, roles, marked_tempo):
    rng = random.Random(f"{seed}:{pid}:{variant}")
    transpose = rng.randint(TRANSPOSE_MIN, TRANSPOSE_MAX)
    if rng.random() < SAME_PROGRAM_PROB:
        prog = rng.choice(COMMON_PROGRAMS)
        programs = [prog for _ in roles]
    else:
        programs = [rng.choice(PROGRAMS_BY_ROLE[r]) for r in roles]
    velocities = [rng.randint(*VELOCITY_RANGE) for _ in roles]
    drawn_tempo = rng.randint(*DEFAULT_TEMPO_RANGE)  # always drawn: keeps the stream stable
    tempo_bpm = marked_tempo if marked_tempo is not None else float(drawn_tempo)
    return {
        "transpose": transpose,
        "programs": programs,
        "velocities": velocities,
        "channels": [channel_for(i) for i in range(len(roles))],
        "tempo_bpm": tempo_bpm,
        "tempo_source": "score" if marked_tempo is not None else "random",
    }


def render_midi(prepared, var) -> bytes:
    """music21 score -> SMF bytes with our programs, channels, velocities and tempo."""
    from music21 import instrument, midi, stream, tempo
    from music21.midi import translate

    s = prepared.transpose(var["transpose"]) if var["transpose"] else prepared.coreCopyAsDerivation("copy")
    for i, part in enumerate(s.parts):
        inst = instrument.Instrument()
        inst.midiProgram = var["programs"][i]
        inst.midiChannel = var["channels"][i]
        part.insert(0, inst)
    first = s.parts[0]
    m1 = first.getElementsByClass(stream.Measure).first()
    (m1 if m1 is not None else first).insert(0, tempo.MetronomeMark(number=var["tempo_bpm"]))

    mf = translate.streamToMidiFile(s)
    # Chromatic transposition can spell the key with 8+ sharps/flats (e.g. G-sharp
    # major), which the SMF key-signature event cannot hold (-7..7) and strict readers
    # reject: use the enharmonic key instead (only notation; the notes are unchanged).
    for track in mf.tracks:
        for ev in track.events:
            if ev.type == midi.MetaEvents.KEY_SIGNATURE and isinstance(ev.data, bytes) and len(ev.data) == 2:
                sf = ev.data[0] - 256 if ev.data[0] > 127 else ev.data[0]
                if sf > 7:
                    sf -= 12
                elif sf < -7:
                    sf += 12
                ev.data = bytes([sf & 0xFF, ev.data[1]])
    music_tracks = [t for t in mf.tracks if t.hasNotes()]
    if len(music_tracks) != len(var["programs"]):
        raise RuntimeError(f"expected {len(var['programs'])} note tracks, got {len(music_tracks)}")
    # music21 maps channels by program number, so voices that share a program would
    # share a channel: rewrite each track onto its own channel, one program change at
    # its start, constant velocity.
    for track, prog, ch, vel in zip(music_tracks, var["programs"], var["channels"], var["velocities"]):
        events = []
        pending = 0
        seen_program = False
        evs = track.events
        i = 0
        while i < len(evs):
            dt = evs[i]
            ev = evs[i + 1] if i + 1 < len(evs) else None
            i += 2
            if ev is None or not dt.isDeltaTime():
                raise RuntimeError("unexpected MIDI track layout")
            drop = False
            if ev.type == midi.ChannelVoiceMessages.PROGRAM_CHANGE:
                if seen_program:
                    drop = True
                else:
                    ev.data = prog
                    seen_program = True
            elif ev.type == midi.ChannelVoiceMessages.NOTE_ON and ev.velocity:
                ev.velocity = vel
            if drop:
                pending += dt.time
                continue
            dt.time += pending
            pending = 0
            events.extend((dt, ev))
        if not seen_program:
            pc = midi.MidiEvent(track, type=midi.ChannelVoiceMessages.PROGRAM_CHANGE, channel=ch + 1)
            pc.data = prog
            events[0:0] = [midi.DeltaTime(track, time=0), pc]
        track.events = events
        track.setChannel(ch + 1)
        track.updateEvents()
    return mf.writestr()


# --------------------------------------------------------------------------- verification


def _vlq(data: bytes, i: int):
    v = 0
    while True:
        b = data[i]
        i += 1
        v = (v << 7) | (b & 0x7F)
        if not b & 0x80:
            return v, i


def parse_smf(data: bytes):
    """Minimal independent Standard MIDI File reader (no music21).

    Returns (ticks_per_quarter, tracks) with each track a list of
    (abs_tick, kind, channel, a, b) where kind is 'on', 'off', 'prog', 'tempo',
    'other'.
    """
    if data[:4] != b"MThd":
        raise ValueError("no MThd")
    hlen = int.from_bytes(data[4:8], "big")
    fmt, ntrk, division = (int.from_bytes(data[8 + 2 * k: 10 + 2 * k], "big") for k in range(3))
    if division & 0x8000:
        raise ValueError("SMPTE division")
    pos = 8 + hlen
    tracks = []
    for _ in range(ntrk):
        if data[pos:pos + 4] != b"MTrk":
            raise ValueError("no MTrk")
        tlen = int.from_bytes(data[pos + 4:pos + 8], "big")
        chunk = data[pos + 8:pos + 8 + tlen]
        pos += 8 + tlen
        i, tick, status, evs = 0, 0, None, []
        while i < len(chunk):
            d, i = _vlq(chunk, i)
            tick += d
            b = chunk[i]
            if b == 0xFF:
                mtype = chunk[i + 1]
                ln, j = _vlq(chunk, i + 2)
                payload = chunk[j:j + ln]
                i = j + ln
                if mtype == 0x51:
                    evs.append((tick, "tempo", None, int.from_bytes(payload, "big"), None))
                elif mtype == 0x59:
                    sf = payload[0] - 256 if payload[0] > 127 else payload[0]
                    evs.append((tick, "key", None, sf, payload[1]))
                else:
                    evs.append((tick, "other", None, mtype, None))
                continue
            if b in (0xF0, 0xF7):
                ln, j = _vlq(chunk, i + 1)
                i = j + ln
                continue
            if b & 0x80:
                status = b
                i += 1
            if status is None:
                raise ValueError("running status without status")
            hi, ch = status & 0xF0, status & 0x0F
            nbytes = 1 if hi in (0xC0, 0xD0) else 2
            a = chunk[i]
            bb = chunk[i + 1] if nbytes == 2 else None
            i += nbytes
            if hi == 0x90 and bb:
                evs.append((tick, "on", ch, a, bb))
            elif hi in (0x80, 0x90):
                evs.append((tick, "off", ch, a, bb))
            elif hi == 0xC0:
                evs.append((tick, "prog", ch, a, None))
            else:
                evs.append((tick, "other", ch, hi, a))
        tracks.append(evs)
    return division, tracks


def verify_midi(data: bytes, var, expected: list[list[int]]) -> float:
    """Check a written file against the variant; return its duration in seconds."""
    division, tracks = parse_smf(data)
    tempos = [e for t in tracks for e in t if e[1] == "tempo"]
    want_us = round(60_000_000 / var["tempo_bpm"])
    if not tempos or any(abs(e[3] - want_us) > 1 for e in tempos):
        raise AssertionError(f"tempo events {[(e[0], e[3]) for e in tempos]} != {want_us} us/quarter")
    for e in (e for t in tracks for e in t if e[1] == "key"):
        if not -7 <= e[3] <= 7 or e[4] not in (0, 1):
            raise AssertionError(f"invalid key signature sf={e[3]} mode={e[4]}")
    note_tracks = [t for t in tracks if any(e[1] == "on" for e in t)]
    if len(note_tracks) != len(var["programs"]):
        raise AssertionError(f"{len(note_tracks)} note tracks, want {len(var['programs'])}")
    used_channels = set()
    for k, t in enumerate(note_tracks):
        chans = {e[2] for e in t if e[2] is not None}
        if chans != {var["channels"][k]}:
            raise AssertionError(f"voice {k}: channels {chans} != {var['channels'][k]}")
        used_channels |= chans
        progs = [e for e in t if e[1] == "prog"]
        if len(progs) != 1 or progs[0][3] != var["programs"][k]:
            raise AssertionError(f"voice {k}: program changes {progs} != {var['programs'][k]}")
        first_on = min(e[0] for e in t if e[1] == "on")
        if progs[0][0] > first_on:
            raise AssertionError(f"voice {k}: program change after first note")
        ons = [e for e in t if e[1] == "on"]
        if sorted(e[3] for e in ons) != expected[k]:
            raise AssertionError(f"voice {k}: notes are not the reference rendering shifted by {var['transpose']}")
        if {e[4] for e in ons} != {var["velocities"][k]}:
            raise AssertionError(f"voice {k}: velocities {sorted({e[4] for e in ons})}")
    if 9 in used_channels:
        raise AssertionError("drum channel used")
    last_tick = max(e[0] for t in note_tracks for e in t if e[1] in ("on", "off"))
    return last_tick / division * 60.0 / var["tempo_bpm"]


# --------------------------------------------------------------------------- split


def assign_splits(groups_in_order: list[str], n_pieces_by_group: dict[str, int]) -> dict[str, str]:
    """Groups arrive in seeded-shuffled order: test first, then val, then train."""
    n = sum(n_pieces_by_group[g] for g in groups_in_order)
    if n >= 3:
        want_test = max(1, round(TEST_FRACTION * n))
        want_val = max(1, round(VAL_FRACTION * n))
    else:
        want_test, want_val = (1 if n == 2 else 0), 0
    out, n_test, n_val = {}, 0, 0
    remaining_groups = len(groups_in_order)
    for g in groups_in_order:
        # never hand the last group(s) away if train would end up empty
        if n_test < want_test and remaining_groups > 1:
            out[g] = "test"
            n_test += n_pieces_by_group[g]
        elif n_val < want_val and remaining_groups > 1:
            out[g] = "val"
            n_val += n_pieces_by_group[g]
        else:
            out[g] = "train"
        remaining_groups -= 1
    return out


# --------------------------------------------------------------------------- main


def load_manifest(out_dir: str):
    try:
        with open(os.path.join(out_dir, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cache_hit(out_dir: str, args_dict: dict, sha: str) -> bool:
    m = load_manifest(out_dir)
    if not m or m.get("format") != FORMAT or m.get("args") != args_dict or m.get("exporter_sha256") != sha:
        return False
    return all(os.path.isfile(os.path.join(out_dir, p["file"])) for p in m.get("pieces", []))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--limit", type=int, default=None, help="export only N pieces (after a seeded shuffle)")
    ap.add_argument("--variants", type=int, default=2, help="MIDI variants per train piece (val/test get 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="ignore an up-to-date manifest")
    a = ap.parse_args(argv)
    if a.limit is not None and a.limit < 1:
        ap.error("--limit must be >= 1")
    if a.variants < 1:
        ap.error("--variants must be >= 1")

    out_dir = os.path.abspath(a.out_dir)
    args_dict = {"limit": a.limit, "variants": a.variants, "seed": a.seed}
    sha = exporter_sha256()
    if not a.force and cache_hit(out_dir, args_dict, sha):
        log(f"music: {out_dir}/manifest.json is up to date for {args_dict}; skipping export")
        return 0

    t0 = time.time()
    import music21

    if music21.__version__ != MUSIC21_VERSION:
        log(f"music: warning: music21 {music21.__version__} != pinned {MUSIC21_VERSION}")

    candidates = list_candidates()
    log(f"music: {len(candidates)} Bach score files in the music21 corpus")

    # Seeded shuffle of groups (so versions of one chorale stay together), then pieces.
    by_group = collections.OrderedDict()
    for rel, pid, path in candidates:
        by_group.setdefault(group_id(pid), []).append((rel, pid, path))
    group_order = sorted(by_group)
    random.Random(f"{a.seed}:shuffle").shuffle(group_order)

    # Pass 1: parse in shuffled order, keep SATB chorales until --limit are found.
    chosen = []  # (rel, pid, path, group)
    skipped = []
    for g in group_order:
        if a.limit is not None and len(chosen) >= a.limit:
            break
        for rel, pid, path in by_group[g]:
            if a.limit is not None and len(chosen) >= a.limit:
                break
            try:
                load_chorale(path)
            except Exception as e:  # noqa: BLE001 - any parse failure skips the piece
                skipped.append({"source": rel, "reason": f"{type(e).__name__}: {e}"})
                log(f"music: skip {rel}: {type(e).__name__}: {e}")
                continue
            chosen.append((rel, pid, path, g))
    log(f"music: {len(chosen)} chorales selected, {len(skipped)} skipped ({time.time() - t0:.1f}s)")
    if not chosen:
        log("music: nothing to export")
        return 1

    groups_in_order = []
    n_by_group = collections.Counter()
    for _, _, _, g in chosen:
        if g not in n_by_group:
            groups_in_order.append(g)
        n_by_group[g] += 1
    split_of_group = assign_splits(groups_in_order, n_by_group)

    # Pass 2: export (music21 caches parsed files, so re-parsing is cheap).
    records = []
    written = set()
    chosen.sort(key=lambda c: c[0])
    for idx, (rel, pid, path, g) in enumerate(chosen, 1):
        split = split_of_group[g]
        n_var = a.variants if split == "train" else 1
        try:
            score, roles, marked = load_chorale(path)
            prepared = prepare_score(score)
            voices = [p.partName for p in prepared.parts]
            quarters = float(prepared.highestTime)
            reference = reference_notes(prepared, roles)
            out = []
            for v in range(n_var):
                var = draw_variant(a.seed, pid, v, roles, marked)
                expected = [[n + var["transpose"] for n in voice] for voice in reference]
                data = render_midi(prepared, var)
                duration = verify_midi(data, var, expected)
                rel_file = f"{split}/{pid}_v{v}.mid"
                out.append((v, rel_file, data, var, duration))
        except Exception as e:  # noqa: BLE001
            skipped.append({"source": rel, "reason": f"{type(e).__name__}: {e}"})
            log(f"music: skip {rel} during export: {type(e).__name__}: {e}")
            continue
        for v, rel_file, data, var, duration in out:
            atomic_write(os.path.join(out_dir, rel_file), data)
            written.add(rel_file)
            records.append({
                "file": rel_file,
                "piece": pid,
                "split": split,
                "variant": v,
                "transpose": var["transpose"],
                "programs": var["programs"],
                "channels": var["channels"],
                "velocities": var["velocities"],
                "voices": voices,
                "tempo_bpm": float(var["tempo_bpm"]),
                "tempo_source": var["tempo_source"],
                "duration_s": round(duration, 3),
                "quarter_length": quarters,
                "source": rel,
                "group": g,
            })
        if idx % 25 == 0 or idx == len(chosen):
            log(f"music: exported {idx}/{len(chosen)} pieces, {len(records)} files ({time.time() - t0:.1f}s)")

    # Remove stale .mid files from an earlier run with other arguments.
    for split in SPLITS:
        d = os.path.join(out_dir, split)
        if os.path.isdir(d):
            for name in os.listdir(d):
                rel_file = f"{split}/{name}"
                if name.endswith(".mid") and rel_file not in written:
                    os.unlink(os.path.join(d, name))

    counts = {s: {"pieces": len({r["piece"] for r in records if r["split"] == s}),
                  "files": sum(1 for r in records if r["split"] == s),
                  "duration_s": round(sum(r["duration_s"] for r in records if r["split"] == s), 1)}
              for s in SPLITS}
    manifest = {
        "format": FORMAT,
        "source": SOURCE,
        "music21_version": music21.__version__,
        "exporter_sha256": sha,
        "args": args_dict,
        "counts": counts,
        "skipped": skipped,
        "pieces": records,
    }
    atomic_write(os.path.join(out_dir, "manifest.json"),
                 (json.dumps(manifest, indent=1) + "\n").encode())
    log(f"music: wrote {len(records)} MIDI files to {out_dir} in {time.time() - t0:.1f}s: "
        + ", ".join(f"{s} {counts[s]['pieces']} pieces/{counts[s]['files']} files" for s in SPLITS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
