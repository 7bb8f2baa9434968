# Chart capture for /process/code-run (toolbox-api.md §7.1). Not imported by the daemon:
# this file is a script template; the daemon puts the user's code (base64) in place of the
# placeholder and pipes the result to `python3 -u -`. When the user's code imports
# matplotlib.pyplot, `show()` is replaced: every open figure not emitted before is printed
# as one `dtn_artifact_k39fd2:{"type":"chart","value":...}` line, then closed.
import base64 as _b64
import sys as _sys

_USER_CODE = _b64.b64decode("__USER_CODE_B64__").decode("utf-8")


def _dtn_install() -> None:
    import importlib.abc
    import importlib.util

    emitted: set = set()

    def finite(value):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return number if number == number and number not in (float("inf"), float("-inf")) else None

    def numbers(values):
        out = [finite(v) for v in values]
        return out if all(v is not None for v in out) else None

    def png(fig, dpi=None):
        import io

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        data = buffer.getvalue()
        try:  # smaller PNGs when Pillow is there
            from PIL import Image

            image = Image.open(io.BytesIO(data))
            optimised = io.BytesIO()
            image.save(optimised, format="PNG", optimize=True)
            data = optimised.getvalue()
        except Exception:
            pass
        return data

    def axis_fields(ax, chart):
        chart["title"] = ax.get_title() or None
        chart["x_label"] = ax.get_xlabel() or None
        chart["y_label"] = ax.get_ylabel() or None
        for axis, get_ticks, get_labels, get_scale in (
            ("x", ax.get_xticks, ax.get_xticklabels, ax.get_xscale),
            ("y", ax.get_yticks, ax.get_yticklabels, ax.get_yscale),
        ):
            ticks = numbers(get_ticks())
            if ticks is not None:
                chart[axis + "_ticks"] = ticks
            chart[axis + "_tick_labels"] = [t.get_text() for t in get_labels()]
            chart[axis + "_scale"] = get_scale()
        return chart

    def chart_of_axes(ax):
        from matplotlib.collections import PathCollection
        from matplotlib.container import BarContainer
        from matplotlib.patches import Wedge

        wedges = [p for p in ax.patches if isinstance(p, Wedge)]
        if wedges:
            labels = [t.get_text() for t in ax.texts]
            elements = []
            for i, wedge in enumerate(wedges):
                label = wedge.get_label()
                if not label or label.startswith("_"):
                    label = labels[i] if i < len(labels) else ""
                elements.append({"label": label, "angle": finite(wedge.theta2 - wedge.theta1) or 0.0,
                                 "radius": finite(wedge.r) or 0.0})
            return {"type": "pie", "title": ax.get_title() or None, "elements": elements}
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        if bars:
            ticks = list(ax.get_xticks())
            tick_labels = [t.get_text() for t in ax.get_xticklabels()]
            elements = []
            for container in bars:
                group = container.get_label()
                group = "" if not group or group.startswith("_") else group
                for rect in container:
                    center = rect.get_x() + rect.get_width() / 2
                    label = ""
                    if ticks and tick_labels:
                        nearest = min(range(len(ticks)), key=lambda i: abs(ticks[i] - center))
                        label = tick_labels[nearest] if nearest < len(tick_labels) else ""
                    elements.append({"label": label, "group": group, "value": str(rect.get_height())})
            return axis_fields(ax, {"type": "bar", "elements": elements})
        scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
        if scatters:
            elements = []
            for collection in scatters:
                points = [numbers(p) for p in collection.get_offsets()]
                label = collection.get_label()
                elements.append({"label": "" if label.startswith("_") else label,
                                 "points": [p for p in points if p is not None]})
            return axis_fields(ax, {"type": "scatter", "elements": elements})
        lines = [line for line in ax.get_lines() if len(line.get_xydata()) > 2]
        if lines:
            elements = []
            for line in lines:
                points = [numbers(p) for p in line.get_xydata()]
                label = line.get_label()
                elements.append({"label": "" if label.startswith("_") else label,
                                 "points": [p for p in points if p is not None]})
            return axis_fields(ax, {"type": "line", "elements": elements})
        return axis_fields(ax, {"type": "unknown"})

    def chart_of_figure(fig):
        image = _b64.b64encode(png(fig)).decode("ascii")
        axes = [ax for ax in fig.axes if ax.has_data() and ax.get_label() != "<colorbar>"]
        if not axes:
            return {"type": "unknown", "png": image}
        if len(axes) == 1:
            chart = chart_of_axes(axes[0])
            chart["png"] = image
            return chart
        title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else None
        return {"type": "composite_chart", "title": title or None, "png": image,
                "elements": [chart_of_axes(ax) for ax in axes]}

    def patch(pyplot):
        import hashlib
        import json

        original_show = pyplot.show

        def show(*args, **kwargs):
            for number in pyplot.get_fignums():
                fig = pyplot.figure(number)
                try:
                    digest = hashlib.md5(png(fig, dpi=50)).hexdigest()
                    if digest in emitted:
                        continue
                    emitted.add(digest)
                    value = chart_of_figure(fig)
                    line = json.dumps({"type": "chart", "value": value}, allow_nan=False)
                except Exception as exc:  # a chart that cannot be captured must not break the run
                    print(f"chart capture failed: {exc}", file=_sys.stderr)
                    continue
                print("dtn_artifact_k39fd2:" + line, flush=True)
            result = original_show(*args, **kwargs)
            pyplot.close("all")
            return result

        pyplot.show = show

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "matplotlib.pyplot":
                return None
            _sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                patch(module)

            spec.loader.exec_module = exec_module
            return spec

    _sys.meta_path.insert(0, Finder())


_dtn_install()
del _dtn_install
exec(compile(_USER_CODE, "<code>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
