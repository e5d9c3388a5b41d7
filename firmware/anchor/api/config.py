"""`anchor serve --config FILE`: the same options as the flags, from a TOML file (CPython only).

The keys are the long flag names without their dashes in front (`spool-max`, `relay-timeout`),
read off the serve parser itself, so a flag added to the command line is a key of the file with
no code here (docs/configuration.md lists them; a test checks the list). A flag given on the
command line wins over the file. Everything is checked before anything is opened: an unknown
key, a value of the wrong type or a bad value is one line naming the file and the key.
"""
import argparse
import tomllib


class ConfigError(Exception):
    pass


def options(parser):
    """{key: argparse action} for every option a file may set: the long flags, less the
    hidden ones (measurement switches) and --config/--help themselves."""
    out = {}
    for a in parser._actions:
        longs = [o for o in a.option_strings if o.startswith("--")]
        if not longs or a.help == argparse.SUPPRESS or a.dest in ("help", "config"):
            continue
        out[longs[0][2:]] = a
    return out


def given(parser, argv):
    """dests of the options present on the command line (`--x v` and `--x=v`; the parser
    must have allow_abbrev=False so no other spelling reaches it)."""
    out = set()
    for a in parser._actions:
        for o in a.option_strings:
            for tok in argv:
                if tok == "--":
                    break
                if tok == o or (o.startswith("--") and tok.startswith(o + "=")):
                    out.add(a.dest)
    return out


def _typed(key, action, value):
    """The value as the flag's own parse would give it, or ConfigError naming what was wanted."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if type(value) is not bool:
            raise ConfigError("%s: expected true or false, got %r" % (key, value))
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(action, argparse._AppendAction):
        if type(value) is not list or not all(type(v) is str for v in value):
            raise ConfigError("%s: expected a list of strings, e.g. [\"a\", \"b\"], got %r" % (key, value))
        return list(value)
    convert = action.type
    if convert in (int, float):
        if type(value) is bool or not isinstance(value, (int, float)):
            raise ConfigError("%s: expected a number, got %r" % (key, value))
        if convert is int and type(value) is not int:
            raise ConfigError("%s: expected a whole number, got %r" % (key, value))
        return convert(value)
    if type(value) is not str:
        raise ConfigError("%s: expected a string, got %r" % (key, value))
    if convert is not None:
        try:
            return convert(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise ConfigError("%s: %s" % (key, e))
    if action.choices is not None and value not in action.choices:
        raise ConfigError("%s: %r is not one of %s" % (key, value, ", ".join(map(str, action.choices))))
    return value


def load(path, parser):
    """{dest: value} from the TOML file at path, each value typed as its flag's."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("%s: no such configuration file" % path)
    except OSError as e:
        raise ConfigError("%s: cannot read it (%s)" % (path, e.strerror or e))
    except tomllib.TOMLDecodeError as e:
        # tomllib's text names the line and column.
        raise ConfigError("%s: not valid TOML: %s" % (path, e))
    known = options(parser)
    out = {}
    for key, value in data.items():
        action = known.get(key)
        if action is None:
            hint = ""
            if key.replace("_", "-") in known:
                hint = " (did you mean %r?)" % key.replace("_", "-")
            elif isinstance(value, dict):
                hint = " (tables are not used; every key is at the top)"
            raise ConfigError("%s: unknown key %r%s; the keys are the long flags of `anchor serve`, "
                              "listed in docs/configuration.md" % (path, key, hint))
        try:
            out[action.dest] = _typed(key, action, value)
        except ConfigError as e:
            raise ConfigError("%s: key %s" % (path, e))
    return out
