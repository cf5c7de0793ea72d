"""The deterministic "tools" background agent: answers the short requests a speech model delegates.

When the model writes DELEGATE + a compact request + END_DELEGATE (training uses "17+25" and "time"), the
server calls `answer` and feeds the returned string back as RESULT + answer + END_RESULT for the model to say
aloud. Beyond the training forms it answers general arithmetic (parsed with `ast` on a whitelist, never
evaluated as code), unit conversions ("5 km in miles") and clock questions, and raises `ToolError` with a
one-sentence reason for anything else. `answer` is a pure function: the time of day comes from the episode's
`clock_start` plus the stream time, never from the wall clock.
"""

from __future__ import annotations

import ast
import decimal
import math
import operator
import re
import string
from collections.abc import Callable

MAX_REQUEST_CHARS = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e15
SIGNIFICANT_DIGITS = 6

_CLOCK_REQUESTS = frozenset(
    {
        "time",
        "clock",
        "the time",
        "what time is it",
        "what time is it now",
        "what is the time",
        "what's the time",
        "whats the time",
        "current time",
        "the current time",
        "tell me the time",
    }
)


class ToolError(ValueError):
    """A request no tool can answer; the message says why, in one short sentence a user can read."""


def answer(request: str, *, stream_time_s: float = 0.0, clock_start: str = "12:00") -> str:
    """The answer to one delegated request.

    - clock: "time", "clock", "what time is it", "the time" (case-insensitive, surrounding whitespace and
      punctuation ignored) -> `clock_start` ("H:MM", 24-hour accepted, e.g. "15:05") advanced by
      `stream_time_s` seconds (floored to whole minutes), printed as f"{h}:{m:02d}" with h in 1..12.
    - unit conversion: "<number> <unit> in|to <unit>", e.g. "5 km in miles" -> "3.10686 miles" (the target
      unit as the user wrote it); length, mass, temperature, time and volume units.
    - arithmetic otherwise: numbers, + - * / // % ** ( ), unary minus, and the words plus, minus, times,
      "multiplied by", "divided by", "to the power of" (optionally after "what is").

    Numbers print as ints when integral, else with up to 6 significant digits and never in scientific
    notation. Raises ToolError for anything that cannot be answered, with the reason in its message.
    """
    if len(request) > MAX_REQUEST_CHARS:
        raise ToolError(f"request too long: {len(request)} characters, the limit is {MAX_REQUEST_CHARS}.")
    text = request.strip()
    bare = " ".join(text.lower().strip(string.whitespace + string.punctuation).split())
    if not bare:
        raise ToolError("empty request: there is nothing to answer.")
    if bare in _CLOCK_REQUESTS:
        return _clock(clock_start, stream_time_s)
    text = _strip_question(text)
    if (conversion := _CONVERSION.match(text)) is not None:
        return _convert(*conversion.groups())
    return _format_number(_evaluate(text))


# --- clock ---------------------------------------------------------------------------------------------------

_CLOCK_START = re.compile(r"(\d{1,2}):(\d{2})")


def _clock(clock_start: str, stream_time_s: float) -> str:
    match = _CLOCK_START.fullmatch(clock_start.strip())
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise ToolError(f"bad clock_start {clock_start!r}: expected H:MM with hour 0-23 and minute 0-59.")
    if not math.isfinite(stream_time_s) or stream_time_s < 0:
        raise ToolError(f"bad stream_time_s {stream_time_s!r}: expected a finite number of seconds >= 0.")
    minutes = (int(match[1]) * 60 + int(match[2]) + int(stream_time_s // 60)) % (24 * 60)
    hour, minute = divmod(minutes, 60)
    return f"{hour % 12 or 12}:{minute:02d}"


# --- unit conversion -----------------------------------------------------------------------------------------

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"°?[a-z]+"
_CONVERSION = re.compile(rf"({_NUMBER})\s*({_UNIT})\s+(?:in|to|into)\s+({_UNIT})", re.IGNORECASE)


def _units(quantity: str, factor: float, *names: str) -> dict[str, tuple[str, float]]:
    return dict.fromkeys(names, (quantity, factor))


# (quantity, size in the quantity's base unit); temperatures are offsets too, so their factor is unused.
_UNITS: dict[str, tuple[str, float]] = {
    **_units("length", 1.0, "m", "meter", "meters", "metre", "metres"),
    **_units("length", 1000.0, "km", "kilometer", "kilometers", "kilometre", "kilometres"),
    **_units("length", 0.01, "cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    **_units("length", 0.001, "mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    **_units("length", 1609.344, "mi", "mile", "miles"),
    **_units("length", 0.3048, "ft", "foot", "feet"),
    **_units("length", 0.0254, "in", "inch", "inches"),
    **_units("length", 0.9144, "yd", "yds", "yard", "yards"),
    **_units("mass", 1.0, "kg", "kgs", "kilogram", "kilograms"),
    **_units("mass", 1e-3, "g", "gram", "grams"),
    **_units("mass", 1e-6, "mg", "milligram", "milligrams"),
    **_units("mass", 0.45359237, "lb", "lbs", "pound", "pounds"),
    **_units("mass", 0.028349523125, "oz", "ounce", "ounces"),
    **_units("temperature", 1.0, "c", "°c", "celsius"),
    **_units("temperature", 1.0, "f", "°f", "fahrenheit"),
    **_units("temperature", 1.0, "k", "kelvin", "kelvins"),
    **_units("time", 1.0, "s", "sec", "secs", "second", "seconds"),
    **_units("time", 60.0, "min", "mins", "minute", "minutes"),
    **_units("time", 3600.0, "h", "hr", "hrs", "hour", "hours"),
    **_units("time", 86400.0, "day", "days"),
    **_units("volume", 1.0, "l", "liter", "liters", "litre", "litres"),
    **_units("volume", 1e-3, "ml", "milliliter", "milliliters", "millilitre", "millilitres"),
    **_units("volume", 3.785411784, "gal", "gallon", "gallons"),
}

_TO_CELSIUS: dict[str, Callable[[float], float]] = {"c": lambda t: t, "f": lambda t: (t - 32) * 5 / 9}
_FROM_CELSIUS: dict[str, Callable[[float], float]] = {"c": lambda t: t, "f": lambda t: t * 9 / 5 + 32}
_ABSOLUTE_ZERO_C = -273.15


def _temperature_scale(unit: str) -> str:
    """The scale letter ("c", "f" or "k") of a temperature unit name."""
    return unit.lstrip("°")[0]


def _convert(number: str, source: str, target: str) -> str:
    for unit in (source, target):
        if unit.lower() not in _UNITS:
            raise ToolError(f"unknown unit {unit!r}.")
    (source_quantity, source_factor), (target_quantity, target_factor) = _UNITS[source.lower()], _UNITS[target.lower()]
    if source_quantity != target_quantity:
        raise ToolError(
            f"cannot convert {source} to {target}: {source} is a {source_quantity} and {target} is a {target_quantity}."
        )
    value = _checked(float(number))
    if source_quantity == "temperature":
        # Via Celsius rather than kelvin: 100 c to f is then exactly 212.
        from_scale, to_scale = _temperature_scale(source.lower()), _temperature_scale(target.lower())
        celsius = value + _ABSOLUTE_ZERO_C if from_scale == "k" else _TO_CELSIUS[from_scale](value)
        if celsius < _ABSOLUTE_ZERO_C - 1e-9:
            raise ToolError(f"{number} {source} is below absolute zero.")
        result = celsius - _ABSOLUTE_ZERO_C if to_scale == "k" else _FROM_CELSIUS[to_scale](celsius)
    else:
        result = value * source_factor / target_factor
    return f"{_format_number(_checked(result))} {target}"


# --- arithmetic ----------------------------------------------------------------------------------------------

_QUESTION_PREFIX = re.compile(r"^(?:what\s+is|what's|whats|calculate|compute)\s+", re.IGNORECASE)
_WORDS = (
    (re.compile(r"\bmultiplied\s+by\b"), "*"),
    (re.compile(r"\bdivided\s+by\b"), "/"),
    (re.compile(r"\bto\s+the\s+power\s+of\b"), "**"),
    (re.compile(r"\btimes\b"), "*"),
    (re.compile(r"\bplus\b"), "+"),
    (re.compile(r"\bminus\b"), "-"),
    (re.compile(r"\bmod(?:ulo)?\b"), "%"),
)
_SYMBOLS = str.maketrans({"×": "*", "÷": "/", "−": "-"})
_ALLOWED_CHARS = frozenset("0123456789.+-*/%() ")
# A value directly followed by "(" parses as a call ("2(3)"), which Python also warns about; not arithmetic.
_IMPLICIT_CALL = re.compile(r"[\d.)]\s*\(")
# Python rejects "007" as a literal; people write it, so drop the leading zeros of integer parts.
_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")

_BINARY_OPS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


def _strip_question(text: str) -> str:
    """`text` without a leading "what is" and trailing "?", "!", "=" or whitespace."""
    return _QUESTION_PREFIX.sub("", text.rstrip(string.whitespace + "?!=")).strip()


def _not_answerable(request: str) -> ToolError:
    return ToolError(f"cannot answer {request!r}: not arithmetic, a unit conversion or the time.")


def _evaluate(request: str) -> float:
    """The value of the arithmetic `request` (already without "what is" and a trailing "?")."""
    expression = request.lower().translate(_SYMBOLS).replace("^", "**")
    for pattern, symbol in _WORDS:
        expression = pattern.sub(f" {symbol} ", expression)
    expression = " ".join(expression.split())
    if not expression or not set(expression) <= _ALLOWED_CHARS or _IMPLICIT_CALL.search(expression):
        raise _not_answerable(request)
    try:
        tree = ast.parse(_LEADING_ZEROS.sub("", expression), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _not_answerable(request) from None
    return _checked(_eval_node(tree.body, request))


def _eval_node(node: ast.AST, request: str) -> float:
    # The whitelist: anything but number literals and these operators (names, calls, attributes, ...) is refused.
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _eval_node(node.operand, request)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and (type(node.op) in _BINARY_OPS or isinstance(node.op, ast.Pow)):
        left, right = _eval_node(node.left, request), _eval_node(node.right, request)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        if right == 0 and isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod):
            raise ToolError("cannot divide by zero.")
        return _checked(_BINARY_OPS[type(node.op)](left, right))
    raise _not_answerable(request)


def _power(base: float, exponent: float) -> float:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent {_format_number(exponent)} is too large: the limit is {MAX_EXPONENT}.")
    if base == 0 and exponent < 0:
        raise ToolError("cannot divide by zero.")
    if base < 0 and not float(exponent).is_integer():
        raise ToolError("no real answer: a negative number to a fractional power.")
    try:
        return _checked(base**exponent)
    except OverflowError:
        raise _too_large() from None


def _too_large() -> ToolError:
    return ToolError("number too large: the limit is 1e15.")


def _checked(value: float) -> float:
    # abs() before isfinite: isfinite would overflow converting a huge int to float.
    if abs(value) > MAX_MAGNITUDE or not math.isfinite(value):
        raise _too_large()
    return value


# --- number formatting ---------------------------------------------------------------------------------------

# A private context so the output never depends on whatever decimal context the caller has set.
_DECIMAL = decimal.Context(prec=50, rounding=decimal.ROUND_HALF_EVEN)


def _format_number(value: float) -> str:
    """An int when integral, else up to 6 significant digits without trailing zeros; never scientific."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer():
        return str(int(value))
    exact = decimal.Decimal(value)
    step = decimal.Decimal(1).scaleb(exact.adjusted() - SIGNIFICANT_DIGITS + 1, _DECIMAL)
    rounded = exact.quantize(step, context=_DECIMAL)
    if rounded == rounded.to_integral_value(context=_DECIMAL):
        return str(int(rounded))
    return format(rounded.normalize(_DECIMAL), "f")
