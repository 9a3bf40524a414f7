"""iproute2's output engine, as the ``vdpa`` tool uses it: text, ``-j`` and ``-jp``.

:class:`Printer` writes either text or JSON from the same calls, following
iproute2's json_print/json_writer behaviour byte for byte:

* text: every ``field`` prints its text form (``"mtu 9000 "``, trailing spaces
  included); arrays start on a new line indented 2 spaces per level, then the
  key, then ``" <item>"`` per element; ``nl()`` prints a newline.
* JSON: ``{"section":{"handle":{...}}}`` with no spaces; pretty mode indents
  4 spaces per level, puts ``": "`` after keys and keeps arrays on one line as
  ``[ "a","b" ]`` (``[ ]`` when empty).  The stream ends with a newline when
  the printer is finished, whatever was printed.
"""

from __future__ import annotations

# feature names (iproute2 vdpa print_features)
NET_FEATURE_NAMES = {
    0: "CSUM",
    1: "GUEST_CSUM",
    2: "CTRL_GUEST_OFFLOADS",
    3: "MTU",
    5: "MAC",
    7: "GUEST_TSO4",
    8: "GUEST_TSO6",
    9: "GUEST_ECN",
    10: "GUEST_UFO",
    11: "HOST_TSO4",
    12: "HOST_TSO6",
    13: "HOST_ECN",
    14: "HOST_UFO",
    15: "MRG_RXBUF",
    16: "STATUS",
    17: "CTRL_VQ",
    18: "CTRL_RX",
    19: "CTRL_VLAN",
    20: "CTRL_RX_EXTRA",
    21: "GUEST_ANNOUNCE",
    22: "MQ",
    23: "CTRL_MAC_ADDR",
    24: "NOTIFY_ON_EMPTY",
    27: "ANY_LAYOUT",
    57: "HASH_REPORT",
    60: "RSS",
    61: "RSC_EXT",
    62: "STANDBY",
    63: "SPEED_DUPLEX",
}
TRANSPORT_FEATURE_NAMES = {
    28: "RING_INDIRECT_DESC",
    29: "RING_EVENT_IDX",
    32: "VERSION_1",
    33: "ACCESS_PLATFORM",
    34: "RING_PACKED",
    35: "IN_ORDER",
    36: "ORDER_PLATFORM",
    37: "SR_IOV",
    38: "NOTIFICATION_DATA",
}
TRANSPORT_F_START = 28
TRANSPORT_F_END = 42
#: device id -> its feature name table (only net has one)
DEVICE_FEATURE_NAMES = {1: NET_FEATURE_NAMES}


def feature_name(bit: int, device_id: int) -> str | None:
    """The name ``print_features`` gives ``bit`` of a device of ``device_id``, or None."""
    if TRANSPORT_F_START <= bit <= TRANSPORT_F_END:
        return TRANSPORT_FEATURE_NAMES.get(bit)
    return DEVICE_FEATURE_NAMES.get(device_id, {}).get(bit)


class JsonWriter:
    """A streaming JSON writer with iproute2 json_writer's spacing rules."""

    def __init__(self, pretty: bool = False):
        self.pretty = pretty
        self.depth = 0
        self.sep = ""  # "" or ","
        self.parts: list[str] = []

    def _eol(self) -> None:
        if self.pretty:
            self.parts.append("\n" + "    " * self.depth)

    def _eor(self) -> None:
        if self.sep:
            self.parts.append(self.sep)
        self.sep = ","

    @staticmethod
    def quote(s: str) -> str:
        out = ['"']
        for ch in s:
            out.append(_ESCAPES.get(ch, ch))
        out.append('"')
        return "".join(out)

    def name(self, name: str) -> None:
        self._eor()
        self._eol()
        self.sep = ""
        self.parts.append(self.quote(name) + (": " if self.pretty else ":"))

    def _begin(self, c: str) -> None:
        self._eor()
        self.parts.append(c)
        self.depth += 1
        self.sep = ""

    def _end(self, c: str) -> None:
        assert self.depth > 0
        self.depth -= 1
        if self.sep:
            self._eol()
        self.parts.append(c)
        self.sep = ","

    def start_object(self) -> None:
        self._begin("{")

    def end_object(self) -> None:
        self._end("}")

    def start_array(self) -> None:
        self._begin("[")
        if self.pretty:
            self.parts.append(" ")

    def end_array(self) -> None:
        if self.pretty and self.sep:
            self.parts.append(" ")
        self.sep = ""
        self._end("]")

    def value(self, raw: str) -> None:
        """A value already in JSON form (number, true/false, quoted string)."""
        self._eor()
        self.parts.append(raw)

    def finish(self) -> str:
        assert self.depth == 0
        self.parts.append("\n")
        return "".join(self.parts)


_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f", "\b": "\\b", "\\": "\\\\", '"': '\\"'}


class Printer:
    """Text or JSON output from the same calls (iproute2's ``PRINT_ANY``)."""

    def __init__(self, json: bool = False, pretty: bool = False):
        self.json = json
        self.jw = JsonWriter(pretty) if json else None
        self.text_parts: list[str] = []
        self.indent = 0

    # structure ----------------------------------------------------------
    def open_object(self, name: str | None = None) -> None:
        """JSON only: ``"name":{`` (or a bare ``{``)."""
        if self.jw is not None:
            if name is not None:
                self.jw.name(name)
            self.jw.start_object()

    def close_object(self) -> None:
        if self.jw is not None:
            self.jw.end_object()

    def handle_start(self, handle: str) -> None:
        """A record: ``"handle": {`` in JSON, ``"handle: "`` in text."""
        if self.jw is not None:
            self.open_object(handle)
        else:
            self.text_parts.append(f"{handle}: ")

    def handle_end(self) -> None:
        if self.jw is not None:
            self.close_object()
        else:
            self.nl()

    def nl(self) -> None:
        """Text only: a newline."""
        if self.jw is None:
            self.text_parts.append("\n")

    def text(self, s: str) -> None:
        """Text only: ``s`` as is."""
        if self.jw is None:
            self.text_parts.append(s)

    def array_start(self, name: str) -> None:
        """A newline, the indent and the key in text; ``"name":[`` in JSON."""
        if self.jw is not None:
            self.jw.name(name)
            self.jw.start_array()
        else:
            self.indent += 1
            self.text_parts.append("\n" + "  " * self.indent + name)

    def array_end(self) -> None:
        if self.jw is not None:
            self.jw.end_array()
        else:
            self.indent -= 1

    # values ---------------------------------------------------------------
    def string(self, key: str | None, text: str, value: str) -> None:
        """``text`` in text mode; ``"key":"value"`` (or an array element) in JSON."""
        if self.jw is not None:
            if key is not None:
                self.jw.name(key)
            self.jw.value(self.jw.quote(value))
        else:
            self.text_parts.append(text)

    def uint(self, key: str | None, text: str, value: int) -> None:
        if self.jw is not None:
            if key is not None:
                self.jw.name(key)
            self.jw.value(str(int(value)))
        else:
            self.text_parts.append(text)

    def bool(self, key: str, text: str, value: bool) -> None:
        if self.jw is not None:
            self.jw.name(key)
            self.jw.value("true" if value else "false")
        else:
            self.text_parts.append(text)

    def features(self, name: str, features: int, device_id: int) -> None:
        """iproute2 ``print_features``: names in ascending bit order, ``bit_N`` (text) or N (JSON)."""
        self.array_start(name)
        for bit in range(64):
            if not features >> bit & 1:
                continue
            label = feature_name(bit, device_id)
            if label is None:
                self.uint(None, f" bit_{bit}", bit)
            else:
                self.string(None, f" {label}", label)
        self.array_end()

    def getvalue(self) -> str:
        """Everything printed (JSON: with its final newline)."""
        if self.jw is not None:
            return self.jw.finish()
        return "".join(self.text_parts)
