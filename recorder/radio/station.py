"""The station: a Liquidsoap 2.1 script generated from ``[radio]``, and its on-air check.

Cow Radio runs all day on one Icecast mount (``radio.mount``) that Liquidsoap feeds:

- the **playlist** (``<state_dir>/radio/station.m3u``, written by `recorder.radio.playlist`:
  this device's and its peers' recordings, newest first, no Audio ID duplicates) in order,
  re-read within a second of a change; new recordings jump the queue, the others keep their
  turn; a file that cannot be decoded is logged and skipped;
- the **live** stream: the recorder's source client connects to Liquidsoap's harbor
  (``radio.harbor_url``) instead of Icecast, as FLAC (`recorder.radio.oggstream` says why), and
  a `fallback` (not track-sensitive) puts it on the air at once, with a short crossfade, and
  gives the air back to the playlist when it ends (about 2 and 2.5 s at the listener,
  tests/bench/bench_radio.py --station);
- a **jingle** (station ID, optional) after every ``jingle_every`` recordings, and every
  ``idle_jingle_minutes`` while there is nothing to play; otherwise silence, so the mount never
  drops and listeners never have to reconnect;
- a **schedule**: outside ``playlist_hours`` only live (and the idle jingle) goes out.

Why a Liquidsoap fallback over a harbor rather than Icecast's ``fallback-mount`` with
``fallback-override``: Icecast moves listeners between two mounts, so they hear a hard cut (no
crossfade), a gap while the live source's first pages arrive, and a second Ogg stream whose
sample rate and channels may differ from the first, which many players do not follow. With
Liquidsoap there is one encoder and one mount: listeners stay on the same connection and only
see new stream metadata, and every switch is a crossfade (docs/field-guide.md).

Metadata (title, device) comes from the sidecars through ``annotate:`` entries; live is
"Live: <device>". Passwords are read from their files by Liquidsoap at start, never written into
the script. The script is the only Liquidsoap configuration: `write_script` writes it
atomically (``recorder radio script``; the station's systemd unit runs that at every start).
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from recorder.atomic import atomic_write_text
from recorder.config import RadioConfig
from recorder.errors import ConfigError, InputFileError, RemoteError
from recorder.radio.nowplaying import PLAYS_PATH
from recorder.radio.playlist import annotate
from recorder.radio.settings import PLAYLIST_DIR, RadioSettings
from recorder.secrets import read_secret

SCRIPT_NAME = "station.liq"
# Liquidsoap works at the live stream's rate (half of 48 kHz capture) in mono: speech radio
# needs no more, and it halves the station's decode, mix and encode work.
STATION_RATE = 24000
# Seconds of live audio the harbor holds before it goes on the air. The live stream to the
# harbor is FLAC, a frame every 170 ms (recorder.radio.oggstream); a buffer that ran dry between
# frames would flap between live and the playlist (Vorbis pages, a second apart, needed 2 s).
HARBOR_BUFFER = 0.5
HARBOR_MAX = 10.0
PLAY_MEMORY = 50  # plays Liquidsoap keeps for the recorder's play log to collect
ICECAST_RETRY = 1.0  # seconds between reconnects to Icecast (a local server: retries are cheap)
STATUS_TIMEOUT = 5.0


def script_path(settings: RadioSettings) -> Path:
    """``<state_dir>/radio/station.liq``: where the script goes unless told otherwise."""
    return settings.state_dir / PLAYLIST_DIR / SCRIPT_NAME


def render_script(settings: RadioSettings) -> str:
    """The Liquidsoap script for this configuration (raises ConfigError when it cannot run).

    Checks what the station needs before Liquidsoap starts: ``radio.station`` on, the
    password files present and private, the jingle (if any) a decodable audio file.
    """
    radio = settings.radio
    if not radio.station:
        raise ConfigError("radio.station: false; set it to true to put the station on the air")
    read_secret(radio.password_file, "radio.password_file")
    harbor_secret = radio.harbor_password_file or radio.password_file
    read_secret(harbor_secret, "radio.harbor_password_file" if radio.harbor_password_file
                else "radio.password_file")
    if radio.jingle is not None:
        _check_audio(radio.jingle, "radio.jingle")
    icecast = urllib.parse.urlsplit(radio.url)
    harbor = urllib.parse.urlsplit(radio.harbor_url)
    if radio.url.rstrip("/") != f"{icecast.scheme}://{icecast.netloc}":
        raise ConfigError(f"radio.url: must be the Icecast server itself, without a path; "
                          f"got {radio.url!r}")
    values = {
        "SOURCE": liq(str(settings.config_path or "built-in defaults")),
        "DEVICE": liq(settings.device_id),
        "BIND": liq(radio.harbor_bind),
        "RATE": str(STATION_RATE),
        "XF": _float(radio.crossfade),
        "PLAYLIST": liq(str(settings.station_playlist)),
        "HARBOR_PORT": str(harbor.port or (443 if harbor.scheme == "https" else 80)),
        "HARBOR_PASSWORD": liq(str(harbor_secret)),
        "HARBOR_BUFFER": _float(HARBOR_BUFFER),
        "HARBOR_MAX": _float(HARBOR_MAX),
        "USER": liq(radio.username),
        "MOUNT": liq(radio.mount.lstrip("/")),
        "LIVE_TITLE": liq(f"Live: {settings.device_id}"),
        "PLAY_MEMORY": str(PLAY_MEMORY),
        "PLAYS_PATH": liq(PLAYS_PATH),
        "ENCODER": _encoder(radio),
        "HOST": liq(icecast.hostname or "127.0.0.1"),
        "PORT": str(icecast.port or (443 if icecast.scheme == "https" else 80)),
        "PROTOCOL": liq(icecast.scheme),
        "ICECAST_PASSWORD": liq(str(radio.password_file)),
        "NAME": liq(radio.name),
        "DESCRIPTION": liq(radio.description),
        "GENRE": liq(radio.genre),
        "RETRY": _float(ICECAST_RETRY),
    }
    parts = [_HEAD, _RECORDINGS, _jingles(settings), _schedule(radio), _LIVE, _mix(radio), _OUTPUT]
    text = "\n".join(part for part in parts if part)
    return re.sub(r"@([A-Z_]+)@", lambda m: values[m[1]], text)


def write_script(settings: RadioSettings, path: Path | None = None) -> tuple[Path, bool]:
    """Write the script atomically (only when it changed); return its path and whether it did."""
    target = path or script_path(settings)
    text = render_script(settings)
    try:
        if target.read_text(encoding="utf-8") == text:
            return target, False
    except (OSError, UnicodeDecodeError):
        pass
    try:
        atomic_write_text(target, text)
    except OSError as exc:
        raise InputFileError(f"cannot write the station script {target}: "
                             f"{exc.strerror or exc}") from None
    return target, True


def on_air(radio: RadioConfig, timeout: float = STATUS_TIMEOUT) -> dict[str, Any]:
    """What Icecast's status page says about the listener mount, when a source holds it.

    Raises RemoteError (one line) when Icecast does not answer or nothing holds the mount.
    Icecast 2.4 does not escape quotes in titles in its JSON, so a page that is not valid
    JSON is still searched for the mount.
    """
    url = radio.url.rstrip("/") + "/status-json.xsl"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read().decode("utf-8", "replace")
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise RemoteError(f"Icecast at {radio.url} does not answer: "
                          f"{getattr(reason, 'strerror', None) or reason}") from None
    for source in _sources(body):
        if urllib.parse.urlsplit(str(source.get("listenurl", ""))).path == radio.mount:
            return source
    raise RemoteError(f"the station is off the air: Icecast at {radio.url} has no source on "
                      f"{radio.mount}")


def liq(text: str) -> str:
    """`text` as a Liquidsoap string literal.

    Liquidsoap interpolates ``#{...}`` in every string literal, so a ``#`` is closed off in a
    literal of its own; backslash, quote and control characters are escaped.
    """
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    escaped = "".join(c if c.isprintable() else f"\\{ord(c):03d}" for c in escaped)
    return '"' + escaped.replace("#", '#" ^ "') + '"'


# --- the script, in parts -----------------------------------------------------------------------

_HEAD = """\
# Cow Radio station for device @DEVICE@: a Liquidsoap 2.1 script GENERATED by
# `recorder radio script` from @SOURCE@. Do not edit it: change [radio] in
# recorder.toml; recorder-station.service writes this file again at every start.

settings.log.stdout.set(true)
settings.log.file.set(false)
settings.log.level.set(3)
settings.server.telnet.set(false)
settings.frame.audio.samplerate.set(@RATE@)
settings.frame.audio.channels.set(1)
settings.harbor.bind_addrs.set([@BIND@])
# The live stream comes as FLAC: libFLAC decodes it at once, where ffmpeg (the default) first
# probes seconds of it.
settings.decoder.priorities.flac.set(20)

def secret(path) =
  string.trim(file.contents(path))
end

station_device = @DEVICE@
crossfade_seconds = @XF@
station_playlist = @PLAYLIST@
"""

_RECORDINGS = """\
# --- the recordings: station.m3u, newest first --------------------------------------------
# Re-read within a second of a change (the recorder replaces the file atomically, which
# file.watch loses track of). New recordings jump the queue; the others keep their turn, counted
# from the last one that went on the air (what was only fetched ahead is fetched again). A
# recording that cannot be decoded is logged and skipped.
entries = ref([])
fresh = ref([])
position = ref(0)
last_played = ref("")
digest = ref("")
pick_ref = ref(fun () -> null())

def next_recording() =
  f = !pick_ref
  f()
end
recordings = request.dynamic(id="recordings", retry_delay=1., next_recording)

def rec pick(tries) =
  n = list.length(!entries)
  if tries <= 0 or n == 0 then
    null()
  else
    uri =
      if !fresh != [] then
        u = list.hd(default="", !fresh)
        fresh := list.tl(!fresh)
        u
      else
        u = list.nth(default="", !entries, !position mod n)
        position := (!position + 1) mod n
        u
      end
    r = request.create(uri)
    if request.resolve(content_type=recordings, r) then
      (r:request?)
    else
      log.severe(label="recordings", "skipped, cannot be played: #{uri}")
      request.destroy(r)
      pick(tries - 1)
    end
  end
end
pick_ref := fun () -> pick(list.length(!entries) + list.length(!fresh))

def reload() =
  try
    if file.exists(station_playlist) then
      d = file.digest(station_playlist)
      if d != !digest then
        lines = list.map(string.trim, file.lines(station_playlist))
        new = list.filter(fun (l) -> l != "" and not string.contains(prefix="#", l), lines)
        old = !entries
        # New recordings come first in the file: the lines before the first one known.
        def rec fresh_prefix(l) =
          if l == [] or list.mem(list.hd(default="", l), old) then [] else
            list.cons(list.hd(default="", l), fresh_prefix(list.tl(l))) end
        end
        fresh := if !digest == "" then [] else fresh_prefix(new) end
        position := if list.mem(!last_played, new) then
                      list.index(fun (u) -> u == !last_played, new) + 1 else 0 end
        entries := new
        digest := d
        n = list.length(new)
        k = list.length(!fresh)
        log.important(label="recordings", "station playlist: #{n} recording(s), #{k} new")
        # What was fetched ahead may be gone, or may have lost its turn: fetch again.
        queued = recordings.queue()
        recordings.set_queue([])
        list.iter(request.destroy, queued)
      end
    end
  catch err do
    log.severe(label="recordings", "cannot read #{station_playlist}: #{err}")
  end
end
recordings.on_track(fun (m) -> last_played := m["initial_uri"])
reload()
thread.run(every=1., reload)
"""

_LIVE = """\
# --- live: the recorder's stream, through the harbor ------------------------------------------
announce_ref = ref(fun () -> ())
def live_connected(_) =
  f = !announce_ref
  f()
end
live = input.harbor(id="live", port=@HARBOR_PORT@, user=@USER@, password=secret(@HARBOR_PASSWORD@),
                    buffer=@HARBOR_BUFFER@, max=@HARBOR_MAX@, on_connect=live_connected, @MOUNT@)
live = insert_metadata(id="live_metadata", live)
announce_ref := fun () -> live.insert_metadata([("title", @LIVE_TITLE@), ("artist", station_device),
                                                ("recorderpi_source", "live")])
"""

_OUTPUT = """\
# --- the play log, for the recorder (recorder.radio.nowplaying) ---------------------------------
plays = ref([])
def log_play(m) =
  source = m["recorderpi_source"]
  if source != "" then
    title = m["title"]
    j = json()
    j.add("at", time())
    j.add("source", source)
    j.add("title", title)
    j.add("device_id", m["artist"])
    j.add("recording_id", m["recording_id"])
    plays := list.prefix(@PLAY_MEMORY@, list.cons(j.stringify(compact=true), !plays))
    log.important(label="station", "on the air (#{source}): #{title}")
  end
end
radio.on_metadata(log_play)

def serve_plays(~protocol, ~data, ~headers, uri) =
  ignore(protocol)
  ignore(data)
  ignore(headers)
  ignore(uri)
  http.response(content_type="application/json; charset=utf-8",
                data="[" ^ string.concat(separator=",", !plays) ^ "]")
end
harbor.http.register(port=@HARBOR_PORT@, method="GET", @PLAYS_PATH@, serve_plays)

# --- to Icecast: one mount, one connection per listener, all day ----------------------------
def icecast_error(message) =
  log.severe(label="icecast", "#{message}; retrying in @RETRY@ s")
  @RETRY@
end
output.icecast(id="icecast", @ENCODER@, host=@HOST@, port=@PORT@, protocol=@PROTOCOL@,
               user=@USER@, password=secret(@ICECAST_PASSWORD@), mount=@MOUNT@, name=@NAME@,
               description=@DESCRIPTION@, genre=@GENRE@, public=false, on_error=icecast_error,
               radio)
"""


def _jingles(settings: RadioSettings) -> str:
    radio = settings.radio
    lines = ["# --- the station ID jingle -----------------------------------------------------"]
    if radio.jingle is None:
        lines += ["programme = recordings", "idle = source.fail(id=\"no_jingle\")"]
        return "\n".join(lines) + "\n"
    meta = annotate({"recorderpi_title": radio.name, "artist": settings.device_id,
                     "recorderpi_source": "jingle"})
    uri = f"annotate:{meta}:{radio.jingle}"
    lines.append(f"jingle_uri = {liq(uri)}")
    if radio.jingle_every > 0:
        lines += [
            "jingles = request.queue(id=\"jingles\")",
            "since_jingle = ref(0)",
            "def count_recording(_) =",
            "  since_jingle := !since_jingle + 1",
            f"  if !since_jingle >= {radio.jingle_every} then",
            "    since_jingle := 0",
            "    jingles.push.uri(jingle_uri)",
            "  end",
            "end",
            "recordings.on_track(count_recording)",
            "programme = fallback(id=\"programme\", [jingles, recordings])",
        ]
    else:
        lines.append("programme = recordings")
    if radio.idle_jingle_minutes > 0:
        lines.append(f"idle = delay({_float(radio.idle_jingle_minutes * 60)}, "
                     "single(id=\"idle_jingle\", fallible=true, jingle_uri))")
    else:
        lines.append("idle = source.fail(id=\"no_idle_jingle\")")
    return "\n".join(lines) + "\n"


def _schedule(radio: RadioConfig) -> str:
    lines = []
    if radio.crossfade > 0:
        lines.append("programme = crossfade(id=\"crossfade\", duration=crossfade_seconds + 1., "
                     "fade_in=crossfade_seconds, fade_out=crossfade_seconds, programme)")
    if radio.playlist_hours:
        start, end = (_minutes(t) for t in radio.playlist_hours.split("-"))
        test = (f"minute >= {start} and minute < {end}" if start < end
                else f"minute >= {start} or minute < {end}")
        lines += [
            f"# The playlist is on the air {radio.playlist_hours} (local time); live at any time.",
            "def on_air() =",
            "  t = time.local()",
            "  minute = t.hour * 60 + t.min",
            f"  {test}",
            "end",
            "programme = switch(id=\"schedule\", [(on_air, programme)])",
        ]
    return "\n".join(lines) + "\n" if lines else ""


def _mix(radio: RadioConfig) -> str:
    lines = ["# --- on the air: live first, then the programme, the idle jingle, silence -------",
             "# Not digital silence: Vorbis codes that in a few bytes a second, so pages (and a",
             "# newly tuned listener's first sound) would come only every 5 s. Noise at -80 dBFS",
             "# is inaudible and keeps a page coming every second.",
             "silence = amplify(id=\"silence\", 0.0001, noise())"]
    if radio.crossfade > 0:
        lines += [
            "def switch_fade(old, new) =",
            "  add(normalize=false, [fade.in(type=\"sin\", duration=crossfade_seconds, "
            "track_sensitive=false, new),",
            "                        fade.out(type=\"sin\", duration=crossfade_seconds, "
            "track_sensitive=false, old)])",
            "end",
            "radio = fallback(id=\"station\", track_sensitive=false, "
            "transition_length=crossfade_seconds,",
            "                 transitions=[switch_fade, switch_fade, switch_fade, switch_fade],",
            "                 [live, programme, idle, silence])",
        ]
    else:
        lines.append("radio = fallback(id=\"station\", track_sensitive=false, "
                     "[live, programme, idle, silence])")
    lines += [
        "# Titles travel base64-encoded through station.m3u (recorder.radio.playlist).",
        "def readable_title(m) =",
        "  encoded = m[\"recorderpi_title\"]",
        "  if encoded != \"\" then [(\"title\", string.base64.decode(encoded))] else [] end",
        "end",
        "radio = metadata.map(id=\"titles\", readable_title, radio)",
    ]
    return "\n".join(lines) + "\n"


def _encoder(radio: RadioConfig) -> str:
    if radio.codec == "opus":
        return (f"%opus(samplerate={STATION_RATE}, channels=1, bitrate={radio.opus_bitrate}, "
                "application=\"audio\")")
    # oggenc's quality scale (-1..10) is Liquidsoap's (-0.1..1.0) times ten.
    return (f"%vorbis(samplerate={STATION_RATE}, channels=1, "
            f"quality={_float(radio.vorbis_quality / 10)})")


def _float(value: float) -> str:
    text = f"{value:.6g}"
    return text if any(c in text for c in ".e") else text + "."


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _check_audio(path: Path, key: str) -> None:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (OSError, RuntimeError) as exc:
        raise InputFileError(f"{key}: cannot decode {path}: {exc}") from None
    if info.frames <= 0:
        raise InputFileError(f"{key}: {path} holds no audio")


def _sources(body: str) -> list[dict[str, Any]]:
    try:
        stats = json.loads(body).get("icestats", {})
    except ValueError:
        # Broken JSON (an unescaped quote in a title): the listen URLs are still findable.
        return [{"listenurl": url} for url in re.findall(r'"listenurl"\s*:\s*"([^"]*)"', body)]
    source = stats.get("source") if isinstance(stats, dict) else None
    if isinstance(source, dict):
        return [source]
    return [s for s in source or [] if isinstance(s, dict)]
