"""Configuration: one TOML file, parsed and validated once, at the edge.

`load_config()` finds the file (``--config PATH``, else ``$RECORDER_CONFIG``, else
``/etc/recorder/recorder.toml``, else built-in defaults that work on a laptop), checks every
value and returns a frozen :class:`Config`. Every bad value raises :class:`ConfigError` with a
one-line message naming the key, e.g. ``audio.samplerate: must be one of 8000, ...; got 12345``.
Unknown sections and keys are errors too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recorder.codec import unsupported_rate
from recorder.errors import ConfigError
from recorder.layout import Layout

SYSTEM_CONFIG = Path("/etc/recorder/recorder.toml")
SAMPLERATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)


@dataclass(frozen=True)
class DeviceConfig:
    id: str = ""  # empty: derived from the MAC address (see recorder.deviceid)


@dataclass(frozen=True)
class SourceSpec:
    """Where audio comes from: a PortAudio input (`device`: name substring, index or
    ``default``) or a sound file (`file`), written ``file:PATH`` in the config; or nowhere
    (``none``: a hub, which bridges, registers and serves but records nothing)."""

    device: str = "default"
    file: Path | None = None
    none: bool = False  # `none`: no audio at all, never a device or GPIO opened (a hub)

    @classmethod
    def parse(cls, text: str, key: str = "audio.source") -> SourceSpec:
        """``file:PATH``, ``none`` or a device; ConfigError for ``file:`` without a path."""
        if text.startswith("file:"):
            if len(text) == 5:
                raise ConfigError(f"{key}: file: needs a path, e.g. file:/srv/clip.wav")
            return cls(device="", file=Path(text[5:]))
        if text.strip().lower() == "none":
            return cls(device="", none=True)
        return cls(device=text or "default")

    @property
    def is_file(self) -> bool:
        return self.file is not None

    def __str__(self) -> str:
        if self.none:
            return "none"
        return f"file:{self.file}" if self.file is not None else self.device


@dataclass(frozen=True)
class AudioConfig:
    source: SourceSpec = field(default_factory=SourceSpec)
    samplerate: int = 48000
    channels: int = 1
    blocksize: int = 1024
    preroll: float = 3.0
    device_wait: float = 10.0  # seconds to wait for a late USB microphone at start


@dataclass(frozen=True)
class EncoderConfig:
    codec: str = "vorbis"  # vorbis | opus
    vorbis_quality: float = 4.0  # oggenc scale, -1..10
    opus_bitrate: int = 32  # kbit/s per channel, 6..256


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path = Path("~/.local/share/recorderpi")
    sync_root: Path = Path()  # default <data_dir>/sync
    staging_dir: Path = Path()  # default <data_dir>/staging
    state_dir: Path = Path()  # default <data_dir>/state
    reserve_mb: int = 200
    max_seconds: float = 3 * 3600.0
    flush_seconds: float = 2.0
    # The storage budget (recorder/budget.py): the most of peers' audio kept here (MB, 0 = no
    # limit: the hub's setting) and its oldest day (0 = any age); own recordings are freed
    # only when space is needed and `safe_copies` others (or one of `hubs`, Syncthing device
    # ids) hold them.
    peer_audio_mb: int = 0
    peer_audio_days: int = 0
    safe_copies: int = 1
    hubs: tuple[str, ...] = ()


@dataclass(frozen=True)
class AudioIdConfig:
    enabled: bool = True
    match_threshold: float = 0.15  # BER at or below which two prints are the same audio
    duplicate_coverage: float = 0.8


@dataclass(frozen=True)
class PapadConfig:
    api: str = "none"  # papad | papad-api | none
    url: str = "http://127.0.0.1:8000"
    auth: str = "token"  # token (upstream papad) | jwt (papadam); current papad only
    token_file: Path | None = None
    username: str = ""
    password_file: Path | None = None
    group: int = 1
    station: str = ""  # legacy papad-api station name; default: the device id
    media_base_url: str = "http://{host}/{device_id}/"
    host: str = ""  # document-root host for media_base_url; default: the hostname
    timeout: float = 10.0
    concurrency: int = 2
    annotation_span: float = 10.0  # seconds after a bookmark covered by its t=start,end
    keep_days: int = 0  # papad's copies older than this may be freed (0 = keep; see README)


@dataclass(frozen=True)
class SyncthingConfig:
    url: str = "http://127.0.0.1:8384"
    api_key_file: Path | None = None
    rescan_interval: int = 3600
    watcher_delay: int = 2
    # Syncthing's public services, off unless asked for: global discovery announces this
    # device's id and addresses to the public discovery servers whenever it has internet;
    # relays carry connections through third parties. The mesh needs neither: its members
    # reach each other over yggdrasil (and the LAN), at the addresses the roster carries.
    global_discovery: bool = False
    relays: bool = False


@dataclass(frozen=True)
class MeshConfig:
    rescan_interval: float = 60.0  # seconds between the bridge's full scans (a safety net)
    export_interval: float = 300.0  # seconds between annotation exports (papad has no events)
    # A peer disconnected, or a folder out of sync, for longer than this: the mesh is degraded
    # (doctor, ctl status, LED).
    degraded_after: float = 300.0
    probe_interval: float = 10.0  # seconds between pings of connected peers; 0 = off


@dataclass(frozen=True)
class YggdrasilConfig:
    # The admin socket of this device's yggdrasil node (yggdrasilctl -endpoint syntax); empty:
    # no yggdrasil on this device (mesh status then shows none).
    admin_endpoint: str = "unix:///run/yggdrasil/yggdrasil.sock"
    # What `recorder mesh yggdrasil-config` writes into yggdrasil's own config:
    peers: tuple[str, ...] = ()  # static peers of other sites: tls://HOST:PORT, tcp://HOST:PORT
    listen: tuple[str, ...] = ()  # listeners other sites may dial: tls://[::]:12345
    multicast: str = "^(eth|en|wlan|wl|usb)"  # interfaces (regex) for LAN discovery; "" = off
    interface: str = "ygg0"  # the tun interface carrying the 200::/7 address
    # The appliance's nftables table on `interface`: only mesh members get in
    # (recorder.mesh.membership.firewall). Off here so a development machine's firewall is
    # never touched; the shipped configs turn it on.
    firewall: bool = False
    # AllowedPublicKeys: the only keys that may peer directly with this node through its
    # `listen` (and LAN) listeners; empty: anyone may (yggdrasil's default).
    allowed_peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class RadioConfig:
    live: bool = False
    url: str = "http://127.0.0.1:8001"  # 8000 is papad's
    mount: str = "/cowradio.ogg"
    username: str = "source"
    password_file: Path | None = None
    codec: str = "vorbis"
    vorbis_quality: float = 2.0
    opus_bitrate: int = 32
    name: str = "Cow Radio"
    description: str = "Live from the community recorder"
    genre: str = "community"
    queue_seconds: float = 5.0
    playlist_length: int = 50
    playlist_max_age_days: int = 30
    # The station (recorder.radio.station): Liquidsoap plays the playlist on `mount` all day,
    # and the live stream goes to its harbor instead of straight to Icecast.
    station: bool = False
    harbor_url: str = "http://127.0.0.1:8005"  # where the live stream reaches the harbor
    harbor_bind: str = "127.0.0.1"  # the address Liquidsoap's harbor listens on
    harbor_password_file: Path | None = None  # None: the Icecast password_file
    crossfade: float = 0.5  # seconds, between recordings and at every live switch
    playlist_hours: str = ""  # "HH:MM-HH:MM" local time the playlist is on air; "": all day
    jingle: Path | None = None  # station ID audio file
    jingle_every: int = 4  # play the jingle after this many recordings (0: never)
    idle_jingle_minutes: float = 5.0  # with nothing to play: the jingle this often (0: never)
    play_log_length: int = 200  # plays kept in playlist.json
    public: bool = False  # the station's listener port open to the whole yggdrasil overlay


@dataclass(frozen=True)
class GpioConfig:
    record_pin: int | None = 17
    mark_pin: int | None = None
    led_pin: int | None = 27
    live_pin: int | None = None
    active_low: bool = True  # button pulls the pin to ground (internal pull-up)
    long_press: float = 1.5
    debounce_ms: float = 30.0


@dataclass(frozen=True)
class ServiceConfig:
    control_socket: Path = Path()  # default <state_dir>/control.sock
    socket_group: str = ""
    silence_dbfs: float = -70.0
    silence_seconds: float = 10.0
    clip_fraction: float = 0.01
    stall_seconds: float = 2.0  # no audio block for this long: the device is gone


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = True
    listen: str = ""  # an IP address; empty: every address, IPv4 and IPv6 (yggdrasil too)
    port: int = 8080
    password_file: Path | None = None  # controls (start, stop, ...) need it; none: read-only
    open_read: bool = True  # false: every page needs the password too
    mesh: bool = False  # mesh members may open the page and document root over yggdrasil
    lan: bool = True  # the LAN may open them (with [yggdrasil] firewall; else listen decides)


@dataclass(frozen=True)
class ImportConfig:
    """``[import]``: audio that does not come from the button (phone calls, files)."""

    inbox: Path | None = None  # a folder the service watches; None: no watcher
    settle_seconds: float = 10.0  # a file unchanged this long is finished
    poll_seconds: float = 2.0
    after: str = "move"  # imported files: "move" to inbox/done/, or "remove"
    publish_caller_name: bool = True  # the caller's display name in the sidecar and papad
    publish_caller_key: bool = False  # the caller's Tox public key (identifies a person)


@dataclass(frozen=True)
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    audioid: AudioIdConfig = field(default_factory=AudioIdConfig)
    papad: PapadConfig = field(default_factory=PapadConfig)
    syncthing: SyncthingConfig = field(default_factory=SyncthingConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    yggdrasil: YggdrasilConfig = field(default_factory=YggdrasilConfig)
    radio: RadioConfig = field(default_factory=RadioConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    web: WebConfig = field(default_factory=WebConfig)
    imports: ImportConfig = field(default_factory=ImportConfig)  # the [import] section
    source_path: Path | None = None  # the file this came from, if any

    @property
    def layout(self) -> Layout:
        """This device's folders (`recorder.layout.Layout`: the one rule for where they are;
        needs a resolved device id)."""
        return Layout.of(self.device.id, self.storage)

    @property
    def db_path(self) -> Path:
        """The SQLite database holding the catalogue and the outbox."""
        return self.storage.state_dir / "recorder.db"


# --- value checks -------------------------------------------------------------------------------
# Each check takes (key, value) and returns the cleaned value or raises ConfigError.

Check = Callable[[str, Any], Any]


def _fail(key: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"{key}: {what}; got {value!r}")


def _type(kind: type | tuple[type, ...], name: str) -> Check:
    def check(key: str, value: Any) -> Any:
        # bool is an int in Python; a "true" where a number is wanted is still a mistake.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise _fail(key, f"must be {name}", value)
        if not isinstance(value, kind):
            raise _fail(key, f"must be {name}", value)
        return value

    return check


def _number(lo: float, hi: float, integer: bool = False) -> Check:
    base = _type(int, "an integer") if integer else _type((int, float), "a number")

    def check(key: str, value: Any) -> Any:
        value = base(key, value)
        if not lo <= value <= hi:
            raise _fail(key, f"must be between {lo:g} and {hi:g}", value)
        return value if integer else float(value)

    return check


def _choice(*options: Any) -> Check:
    def check(key: str, value: Any) -> Any:
        if value not in options:
            raise _fail(key, "must be one of " + ", ".join(str(o) for o in options), value)
        return value

    return check


def _string(key: str, value: Any) -> str:
    return _type(str, "a string")(key, value)


def _path(key: str, value: Any) -> Path:
    value = _type(str, "a path string")(key, value)
    return Path(value).expanduser() if value else Path()


def _optional_path(key: str, value: Any) -> Path | None:
    value = _type(str, "a path string")(key, value)
    return Path(value).expanduser() if value else None


def _pin(key: str, value: Any) -> int | None:
    # 0 (or -1) switches an input off: TOML has no null.
    value = _type(int, "a BCM pin number (0 to disable)")(key, value)
    if value <= 0:
        return None
    if value > 27:
        raise _fail(key, "must be a BCM GPIO number 1..27, or 0 to disable", value)
    return value


def _url(key: str, value: Any) -> str:
    value = _string(key, value)
    if not value.startswith(("http://", "https://")):
        raise _fail(key, "must be an http:// or https:// URL", value)
    return value.rstrip("/")


def _source(key: str, value: Any) -> SourceSpec:
    return SourceSpec.parse(_string(key, value), key)


def _address(key: str, value: Any) -> str:
    import ipaddress

    value = _string(key, value)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _fail(key, "must be an IP address such as 127.0.0.1 or 0.0.0.0", value) from None


def _hours(key: str, value: Any) -> str:
    """ "HH:MM-HH:MM" (the end may be 24:00 and may wrap past midnight), or "" for all day."""
    import re

    value = _string(key, value).strip()
    if not value:
        return ""
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)", value)
    if not match or (match[3] == "24" and match[4] != "00") or value[:5] == value[6:]:
        raise _fail(key, "must be HH:MM-HH:MM local time (e.g. 06:00-22:30), or empty", value)
    return value


def _mount(key: str, value: Any) -> str:
    value = _string(key, value)
    if not value.startswith("/") or len(value) < 2 or " " in value:
        raise _fail(key, "must be an Icecast mount like /cowradio.ogg", value)
    return value


def _admin_endpoint(key: str, value: Any) -> str:
    value = _string(key, value).strip()
    if value == "":
        return value
    if value.startswith("unix:///") and len(value) > len("unix:///"):
        return value
    host, _, port = value.removeprefix("tcp://").rpartition(":")
    if value.startswith("tcp://") and host and port.isdigit() and 0 < int(port) < 65536:
        return value
    raise _fail(key, "must be unix:///PATH or tcp://HOST:PORT (or empty)", value)


def _uri_list(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _fail(key, "must be a list of URIs like \"tls://203.0.113.5:12345\"", value)
    out = []
    for item in value:
        host_port = item.split("://", 1)[1] if isinstance(item, str) and "://" in item else ""
        scheme = item.split("://", 1)[0] if host_port else ""
        if scheme not in ("tcp", "tls", "socks") or ":" not in host_port or " " in item:
            raise _fail(key, "entries must be tls://HOST:PORT, tcp://HOST:PORT or socks://...",
                        item)
        out.append(item)
    return tuple(out)


def _regex(key: str, value: Any) -> str:
    value = _string(key, value)
    try:
        re.compile(value)
    except re.error as exc:
        raise _fail(key, f"must be a regular expression ({exc})", value) from None
    return value


def _ifname(key: str, value: Any) -> str:
    value = _string(key, value)
    if value != "auto" and not (0 < len(value) <= 15 and value.replace("-", "").isalnum()):
        raise _fail(key, "must be an interface name (letters, digits, '-', at most 15)", value)
    return value


def _listen(key: str, value: Any) -> str:
    value = _string(key, value).strip().strip("[]")
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise _fail(key, "must be an IP address like 0.0.0.0, :: or 127.0.0.1 "
                        "(empty: every address)", value) from None
    return value


def _syncthing_ids(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(key, "must be a list of Syncthing device ids", value)
    out = []
    for item in value:
        plain = item.strip().upper().replace("-", "")
        if not re.fullmatch(r"[A-Z2-7]{56}", plain):
            raise _fail(key, "entries must be Syncthing device ids (XXXXXXX-XXXXXXX-...)", item)
        out.append("-".join(plain[i:i + 7] for i in range(0, 56, 7)))
    return tuple(out)


_boolean = _type(bool, "true or false")


def _keys(key: str, value: Any) -> tuple[str, ...]:
    """yggdrasil public keys: 64 hex digits each."""
    if not isinstance(value, list):
        raise _fail(key, "must be a list of yggdrasil public keys (64 hex digits)", value)
    for item in value:
        if not isinstance(item, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", item):
            raise _fail(key, "must be a list of yggdrasil public keys (64 hex digits)", item)
    return tuple(v.lower() for v in value)

SCHEMA: dict[str, dict[str, Check]] = {
    "device": {"id": _string},
    "audio": {
        "source": _source,
        "samplerate": _choice(*SAMPLERATES),
        "channels": _number(1, 2, integer=True),
        "blocksize": _number(64, 16384, integer=True),
        "preroll": _number(0, 60),
        "device_wait": _number(0, 3600),
    },
    "encoder": {
        "codec": _choice("vorbis", "opus"),
        "vorbis_quality": _number(-1, 10),
        "opus_bitrate": _number(6, 256, integer=True),
    },
    "storage": {
        "data_dir": _path,
        "sync_root": _path,
        "staging_dir": _path,
        "state_dir": _path,
        "reserve_mb": _number(0, 10**7, integer=True),
        "max_seconds": _number(1, 7 * 24 * 3600),
        "flush_seconds": _number(0.1, 2.0),
        "peer_audio_mb": _number(0, 10**8, integer=True),
        "peer_audio_days": _number(0, 100 * 366, integer=True),
        "safe_copies": _number(1, 1000, integer=True),
        "hubs": _syncthing_ids,
    },
    "audioid": {
        "enabled": _boolean,
        "match_threshold": _number(0.01, 0.35),
        "duplicate_coverage": _number(0.1, 1.0),
    },
    "papad": {
        "api": _choice("papad", "papad-api", "none"),
        "url": _url,
        "auth": _choice("token", "jwt"),
        "token_file": _optional_path,
        "username": _string,
        "password_file": _optional_path,
        "group": _number(1, 2**31, integer=True),
        "station": _string,
        "media_base_url": _url,
        "host": _string,
        "timeout": _number(0.5, 300),
        "concurrency": _number(1, 16, integer=True),
        "annotation_span": _number(0.5, 3600),
        "keep_days": _number(0, 100 * 366, integer=True),
    },
    "syncthing": {
        "url": _url,
        "api_key_file": _optional_path,
        "rescan_interval": _number(0, 86400, integer=True),
        "watcher_delay": _number(1, 3600, integer=True),
        "global_discovery": _boolean,
        "relays": _boolean,
    },
    "mesh": {
        "rescan_interval": _number(1, 86400),
        "export_interval": _number(1, 86400),
        "degraded_after": _number(0, 7 * 86400),
        "probe_interval": _number(0, 3600),
    },
    "yggdrasil": {
        "admin_endpoint": _admin_endpoint,
        "peers": _uri_list,
        "listen": _uri_list,
        "multicast": _regex,
        "interface": _ifname,
        "firewall": _boolean,
        "allowed_peers": _keys,
    },
    "radio": {
        "live": _boolean,
        "url": _url,
        "mount": _mount,
        "username": _string,
        "password_file": _optional_path,
        "codec": _choice("vorbis", "opus"),
        "vorbis_quality": _number(-1, 10),
        "opus_bitrate": _number(6, 256, integer=True),
        "name": _string,
        "description": _string,
        "genre": _string,
        "queue_seconds": _number(0.5, 60),
        "playlist_length": _number(1, 10000, integer=True),
        "playlist_max_age_days": _number(1, 36500, integer=True),
        "station": _boolean,
        "harbor_url": _url,
        "harbor_bind": _address,
        "harbor_password_file": _optional_path,
        "crossfade": _number(0, 10),
        "playlist_hours": _hours,
        "jingle": _optional_path,
        "jingle_every": _number(0, 1000, integer=True),
        "idle_jingle_minutes": _number(0, 1440),
        "play_log_length": _number(1, 100000, integer=True),
        "public": _boolean,
    },
    "gpio": {
        "record_pin": _pin,
        "mark_pin": _pin,
        "led_pin": _pin,
        "live_pin": _pin,
        "active_low": _boolean,
        "long_press": _number(0.2, 10),
        "debounce_ms": _number(0, 500),
    },
    "service": {
        "control_socket": _path,
        "socket_group": _string,
        "silence_dbfs": _number(-120, 0),
        "silence_seconds": _number(1, 3600),
        "clip_fraction": _number(0, 1),
        "stall_seconds": _number(0.2, 60),
    },
    "web": {
        "enabled": _boolean,
        "listen": _listen,
        # Below 1024 the service user would need CAP_NET_BIND_SERVICE: not granted.
        "port": _number(1024, 65535, integer=True),
        "password_file": _optional_path,
        "open_read": _boolean,
        "mesh": _boolean,
        "lan": _boolean,
    },
    "import": {
        "inbox": _optional_path,
        "settle_seconds": _number(0, 86400),
        "poll_seconds": _number(0.1, 3600),
        "after": _choice("move", "remove"),
        "publish_caller_name": _boolean,
        "publish_caller_key": _boolean,
    },
}
# A section whose name is a Python keyword lives under another field name of `Config`.
_FIELD_OF = {"import": "imports"}

_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name in SCHEMA}


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Return the config file to use, by precedence, or None for built-in defaults.

    An explicitly named file (argument or ``$RECORDER_CONFIG``) must exist.
    """
    named = explicit or os.environ.get("RECORDER_CONFIG")
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Load, validate and return the configuration.

    `overrides` (``{"audio": {"source": "file:x.wav"}}``) are applied on top of the file, with the
    same validation, so command-line options cannot bypass the checks.
    The device id is resolved here (MAC address when not configured).
    """
    found = find_config_path(path)
    raw: dict[str, Any] = {}
    if found is not None:
        try:
            raw = tomllib.loads(found.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {found}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{found}: invalid TOML: {exc}") from None
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    return parse_config(raw, source_path=found)


def parse_config(raw: Mapping[str, Any], source_path: Path | None = None) -> Config:
    """Validate a parsed TOML mapping and return a :class:`Config`."""
    sections: dict[str, Any] = {}
    for name, values in raw.items():
        if name not in SCHEMA:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(SCHEMA)})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{name}: must be a table [{name}]")
        cleaned = {}
        for key, value in values.items():
            check = SCHEMA[name].get(key)
            if check is None:
                raise ConfigError(f"{name}.{key}: unknown key")
            cleaned[key] = check(f"{name}.{key}", value)
        sections[name] = cleaned
    built = {_FIELD_OF.get(name, name): _section_class(name)(**sections.get(name, {}))
             for name in SCHEMA}
    built["storage"] = _resolve_storage(built["storage"])
    built["service"] = _resolve_service(built["service"], built["storage"])
    built["device"] = _resolve_device(built["device"])
    _cross_checks(built)
    return Config(**built, source_path=source_path)


def _section_class(name: str) -> type:
    field_name = _FIELD_OF.get(name, name)
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}[
        field_name
    ]  # type: ignore[return-value]


def _resolve_storage(s: StorageConfig) -> StorageConfig:
    data = s.data_dir.expanduser()
    return dataclasses.replace(
        s,
        data_dir=data,
        sync_root=s.sync_root if s.sync_root != Path() else data / "sync",
        staging_dir=s.staging_dir if s.staging_dir != Path() else data / "staging",
        state_dir=s.state_dir if s.state_dir != Path() else data / "state",
    )


def _resolve_service(s: ServiceConfig, storage: StorageConfig) -> ServiceConfig:
    if s.control_socket == Path():
        return dataclasses.replace(s, control_socket=storage.state_dir / "control.sock")
    return s


# Ids copied from documentation or an unedited template: two devices with one of these would
# share a folder, so they are refused, never used.
PLACEHOLDER_IDS = frozenset({
    "set-me", "setme", "set_me", "change-me", "changeme", "change_me", "example", "example-id",
    "your-id", "your-device-id", "device-id", "deviceid", "my-device", "placeholder", "todo",
    "tbd", "none", "null", "unset", "default", "id", "xxx", "recorder", "recorderpi",
})
_PLACEHOLDER_RE = re.compile(
    r"^(x+|0+|[._-]+|(.*[._-])?(set-?me|change-?me|placeholder)([._-].*)?)$")


def _resolve_device(d: DeviceConfig) -> DeviceConfig:
    from recorder.deviceid import resolve_device_id

    if d.id and (d.id.strip().lower() in PLACEHOLDER_IDS or _PLACEHOLDER_RE.match(d.id)):
        raise ConfigError(f"device.id: {d.id!r} is a placeholder: give every device its own id "
                          "(on the Pi `services/firstboot.sh device-id` prints the one derived "
                          "from its MAC address)")
    return DeviceConfig(id=resolve_device_id(d.id))


def _cross_checks(built: dict[str, Any]) -> None:
    storage: StorageConfig = built["storage"]
    staging = storage.staging_dir.resolve()
    sync_root = storage.sync_root.resolve()
    if staging == sync_root or sync_root in staging.parents:
        raise ConfigError(
            f"storage.staging_dir: must be outside the synced tree {sync_root}; got {staging}"
        )
    audio: AudioConfig = built["audio"]
    if audio.source.none:  # a hub: no audio to stream live, no GPIO opened for a switch
        for key, on in (("radio.live", built["radio"].live),
                        ("gpio.live_pin", built["gpio"].live_pin is not None)):
            if on:
                raise ConfigError(f"{key}: a hub (audio.source = \"none\") has no audio to "
                                  "stream live; turn it off")
    encoder: EncoderConfig = built["encoder"]
    problem = unsupported_rate(encoder.codec, audio.samplerate)
    if problem:
        raise ConfigError(f"encoder.codec: {problem}; set audio.samplerate to one of those "
                          "or use codec = \"vorbis\"")
    papad: PapadConfig = built["papad"]
    if papad.api == "papad":
        if papad.auth == "token" and papad.token_file is None:
            raise ConfigError("papad.token_file: required when api = 'papad' and auth = 'token'")
        if papad.auth == "jwt" and (not papad.username or papad.password_file is None):
            raise ConfigError("papad.password_file: username and password_file required for jwt")
    if "{device_id}" not in papad.media_base_url and papad.api == "papad-api":
        raise ConfigError(
            "papad.media_base_url: must contain {device_id}; got " + repr(papad.media_base_url)
        )
    inbox = built["imports"].inbox
    if inbox is not None:
        inbox = inbox.resolve()
        for folder in (sync_root, staging):
            if inbox == folder or folder in inbox.parents or inbox in folder.parents:
                raise ConfigError(f"import.inbox: must be outside {folder} (the recorder's own "
                                  f"files); got {inbox}")
    web: WebConfig = built["web"]
    if web.enabled and not web.open_read and web.password_file is None:
        raise ConfigError("web.password_file: required when web.open_read = false "
                          "(nobody could open the pages)")
