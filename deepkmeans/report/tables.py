"""Plain-text / markdown tables of what compression did, layer by layer."""

from __future__ import annotations

from deepkmeans.accounting import Accounting


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def layer_table(acc: Accounting) -> str:
    """Markdown table: rows N, d, K, p, entropy H and real coded bits per index, bits, memory share."""
    total_before, total_after = acc.bits_before, acc.bits_after
    header = (
        "| layer | N rows | d | K | p | H bits/idx | coded bits/idx | bits before | bits after "
        "| share before | share after | CR |"
    )
    lines = [header, "|" + "---|" * 12]
    for la in acc.layers:
        coded = la.coded_bits / la.n_rows if la.coded_bits is not None else None
        name = la.name or "(model)"
        if not la.shared:
            name += f" ({la.note or 'dense'})"
        elif la.note:
            name += f" ({la.note})"
        lines.append(
            f"| {name} | {_fmt(la.n_rows, 'd')} | {_fmt(la.d, 'd')} | {_fmt(la.K, 'd')} | {_fmt(la.p, '.2f')} "
            f"| {_fmt(la.entropy_bits, '.3f')} | {_fmt(coded, '.3f')} | {la.bits_before} | {la.bits_after:.0f} "
            f"| {100 * la.bits_before / total_before:.1f}% | {100 * la.bits_after / total_after:.1f}% "
            f"| {la.bits_before / la.bits_after:.1f}x |"
        )
    lines.append(f"| **total** | | | | | | | {total_before} | {total_after:.0f} | 100% | 100% | {acc.paper_cr:.1f}x |")
    return "\n".join(lines)


def ratio_summary(acc: Accounting) -> str:
    """Both compression ratios side by side, each with what it divides."""
    text = f"paper-accounting CR {acc.paper_cr:.1f}x ({acc.bits_before} / {acc.bits_after:.0f} bits)"
    if acc.normalization_bits:
        text += f", normalization layers ({acc.normalization_bits} bits) not counted"
    if acc.file_bytes:
        text += f"; file CR {acc.file_cr:.1f}x ({acc.dense_bytes} dense bytes / {acc.file_bytes} file bytes)"
    ideal, coded = acc.index_bits_ideal, acc.index_bits
    if ideal > 0:
        text += f"\nindex streams: {coded} bits coded vs N*H = {ideal:.0f} bits ({100 * (coded / ideal - 1):+.2f}%)"
    return text
