"""A signed receipt as a customer keeps it: printed lines in Chinese and English, a QR code of
the signed receipt, an 80 mm PDF that carries the signed receipt inside, and reading them back.

**The QR text** is a JSON array, the receipt's values in a fixed order after a tag that names
its kind (`FORMS`); a top-up's::

    ["prepay-receipt/1", receipt_seq, site, topup_id, account, amount_minor, currency,
     balance_after_minor, applied_at, payment_ref, store, key_id, signature]

(``null`` for a field the receipt has none of). A vending session's is tagged
``prepay-vend-receipt/1``, a ticket sale's ``prepay-ticket-receipt/1``. Without the keys of the
signed object it is about 270 bytes for a top-up from the box, a version 12 QR code at error
level M, small enough for an 80 mm roll. The verifier rebuilds the signed object from it
(leaving out the nulls, and putting back the ``kind`` the tag names), and checks the signature
over that object's canonical JSON, so nothing is signed twice or differently.

**The PDF** is one page 80 mm wide, as tall as its lines; the signed receipt itself (the JSON
object, one line) is attached to it as the embedded file ``receipt.json``, uncompressed, so
``prepay receipt verify FILE.pdf`` checks the document it was given, and compares the printed
amount, balance, account and number with the signed ones.

fpdf2 (writing), segno (the QR code) and pypdf (reading) load only when a receipt is printed or
read, so that the other commands start without them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

from billing_engine.base.errors import PrepayError
from billing_engine.money import format_minor
from gateway.northbound.payloads import (
    ReceiptKind,
    ReceiptPayload,
    TicketSaleReceiptPayload,
    VendingReceiptPayload,
)
from gateway.northbound.receipts import AnyReceiptPayload
from gateway.northbound.signing import loads_strict

if TYPE_CHECKING:
    from fpdf import FPDF

QR_TAG: Final = "prepay-receipt/1"
#: The receipt's fields in the QR text's order, after the tag.
QR_FIELDS: Final = (
    "receipt_seq",
    "site",
    "topup_id",
    "account",
    "amount_minor",
    "currency",
    "balance_after_minor",
    "applied_at",
    "payment_ref",
    "store",
    "key_id",
    "signature",
)


@dataclass(frozen=True, slots=True)
class ReceiptForm:
    """How one kind of receipt is printed and carried in a QR text: its tag, its fields in the
    QR text's order (``kind`` is the tag's, never a value) and its title."""

    kind: ReceiptKind
    tag: str
    fields: tuple[str, ...]
    title_zh: str
    title_en: str


FORMS: Final = {
    ReceiptKind.TOPUP: ReceiptForm(
        ReceiptKind.TOPUP, QR_TAG, QR_FIELDS, "充值收据", "TOP-UP RECEIPT"
    ),
    ReceiptKind.VENDING: ReceiptForm(
        ReceiptKind.VENDING,
        "prepay-vend-receipt/1",
        (
            "receipt_seq",
            "site",
            "session",
            "dispenser",
            "account",
            "ticket",
            "poured_ml",
            "billed_ml",
            "amount_minor",
            "currency",
            "balance_after_minor",
            "closed_at",
            "store",
            "key_id",
            "signature",
        ),
        "售水收据",
        "WATER SALE RECEIPT",
    ),
    ReceiptKind.TICKET_SALE: ReceiptForm(
        ReceiptKind.TICKET_SALE,
        "prepay-ticket-receipt/1",
        (
            "receipt_seq",
            "site",
            "code",
            "ticket_kind",
            "product",
            "valid_until",
            "amount_minor",
            "currency",
            "sold_at",
            "store",
            "key_id",
            "signature",
        ),
        "水票收据",
        "WATER TICKET RECEIPT",
    ),
}
_BY_TAG: Final = {form.tag: form for form in FORMS.values()}
#: The tags a receipt's QR text may start with.
QR_TAGS: Final = frozenset(_BY_TAG)
ATTACHMENT: Final = "receipt.json"
#: Where Debian's CJK fonts put their files (fonts-wqy-microhei, fonts-wqy-zenhei,
#: fonts-noto-cjk), in the order they are tried.
CJK_FONTS: Final = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
)

#: How TrueType, OpenType (CFF), old Apple TrueType and font collection files begin.
_FONT_MAGIC: Final = frozenset({b"\x00\x01\x00\x00", b"OTTO", b"true", b"ttcf"})
_PAGE_W_MM: Final = 80.0
_MARGIN_MM: Final = 4.0
_QR_W_MM: Final = 56.0
_QR_PX_PER_MODULE: Final = 4
_TALL_MM: Final = 1000.0  # the first, measuring pass lays the receipt out on a long page


_FONT_HINT: Final = (
    "install Debian's fonts-wqy-microhei (apt-get install fonts-wqy-microhei)"
    " or pass --font FILE.ttf|.ttc"
)


class UnreadableReceiptError(PrepayError):
    """The input holds no signed receipt: not a receipt PDF, QR text or receipt JSON."""


class MissingFontError(PrepayError):
    """No font with Chinese glyphs is installed."""


@dataclass(frozen=True, slots=True)
class PrintedLine:
    """One item of the printed receipt: its label in both languages and its value.

    ``checked``: the verifier compares the value printed on the page with the signed one.
    """

    label_zh: str
    label_en: str
    value: str
    checked: bool = False


SCAN_HINT: Final = "扫码验证 Scan to check: prepay receipt verify --qr"


def form_of(receipt: AnyReceiptPayload) -> ReceiptForm:
    """The form of a receipt's kind."""
    if isinstance(receipt, VendingReceiptPayload):
        return FORMS[ReceiptKind.VENDING]
    if isinstance(receipt, TicketSaleReceiptPayload):
        return FORMS[ReceiptKind.TICKET_SALE]
    return FORMS[ReceiptKind.TOPUP]


def issued_at(receipt: AnyReceiptPayload) -> datetime:
    """When the receipted thing happened: a top-up applied, a session closed, a ticket sold."""
    if isinstance(receipt, VendingReceiptPayload):
        return receipt.closed_at
    if isinstance(receipt, TicketSaleReceiptPayload):
        return receipt.sold_at
    return receipt.applied_at


def litres(ml: int) -> str:
    """A volume in mL as litres with three decimals ("2.500 L"): exact, no float."""
    return f"{ml // 1000}.{ml % 1000:03d} L"


def grouped(code: str) -> str:
    """A 16-digit ticket code in groups of four, as printed on paper tickets."""
    return " ".join(code[i : i + 4] for i in range(0, len(code), 4))


def printed_lines(receipt: AnyReceiptPayload, tz: ZoneInfo) -> list[PrintedLine]:
    """What the receipt shows, in order; the time in ``tz`` (the local time of the customer:
    the account's tariff zone, or the box's ticket zone)."""
    local = issued_at(receipt).astimezone(tz)
    when = PrintedLine("时间", "Time", f"{local:%Y-%m-%d %H:%M:%S %z} ({tz.key})")
    number = PrintedLine("收据号", "Receipt no.", str(receipt.receipt_seq), checked=True)
    if isinstance(receipt, VendingReceiptPayload):
        lines = [number, *_vending_lines(receipt), when]
    elif isinstance(receipt, TicketSaleReceiptPayload):
        lines = [number, *_ticket_sale_lines(receipt), when]
    else:
        lines = [number, *_topup_lines(receipt), when]
        lines.append(PrintedLine("充值单号", "Top-up id", receipt.topup_id))
        if receipt.payment_ref is not None:
            lines.append(PrintedLine("付款参考", "Payment ref.", receipt.payment_ref))
    if receipt.store is not None:
        lines.append(PrintedLine("存储", "Store", receipt.store))
    lines.append(PrintedLine("签名密钥", "Key id", receipt.key_id))
    return lines


def _topup_lines(receipt: ReceiptPayload) -> list[PrintedLine]:
    return [
        PrintedLine("账户", "Account", receipt.account, checked=True),
        PrintedLine(
            "充值金额",
            "Amount",
            format_minor(receipt.amount_minor, receipt.currency),
            checked=True,
        ),
        PrintedLine(
            "充值后余额",
            "Balance after",
            format_minor(receipt.balance_after_minor, receipt.currency),
            checked=True,
        ),
    ]


def _vending_lines(receipt: VendingReceiptPayload) -> list[PrintedLine]:
    lines = [
        PrintedLine("售水机", "Dispenser", receipt.dispenser, checked=True),
        PrintedLine("会话", "Session", receipt.session),
    ]
    if receipt.ticket is not None:
        lines.append(PrintedLine("水票", "Ticket", grouped(receipt.ticket), checked=True))
    if receipt.account is not None:
        lines.append(PrintedLine("账户", "Account", receipt.account, checked=True))
    lines.append(PrintedLine("出水量", "Poured", litres(receipt.poured_ml), checked=True))
    if receipt.billed_ml != receipt.poured_ml:
        lines.append(PrintedLine("计费水量", "Billed", litres(receipt.billed_ml), checked=True))
    if receipt.amount_minor is not None and receipt.currency is not None:
        lines.append(
            PrintedLine(
                "金额", "Amount", format_minor(receipt.amount_minor, receipt.currency), checked=True
            )
        )
    if receipt.balance_after_minor is not None and receipt.currency is not None:
        lines.append(
            PrintedLine(
                "余额",
                "Balance after",
                format_minor(receipt.balance_after_minor, receipt.currency),
                checked=True,
            )
        )
    return lines


def _ticket_sale_lines(receipt: TicketSaleReceiptPayload) -> list[PrintedLine]:
    lines = [
        PrintedLine("票号", "Ticket", grouped(receipt.code), checked=True),
        PrintedLine("类型", "Kind", "应急水票 emergency"),
        PrintedLine("品名", "Product", receipt.product, checked=True),
        PrintedLine("有效期至", "Valid until", receipt.valid_until.isoformat(), checked=True),
    ]
    if receipt.amount_minor is not None and receipt.currency is not None:
        lines.append(
            PrintedLine(
                "金额", "Amount", format_minor(receipt.amount_minor, receipt.currency), checked=True
            )
        )
    return lines


def qr_text(signed: Mapping[str, Any]) -> str:
    """The QR text of a signed receipt (see the module's description).

    Raises:
        ValueError: ``signed`` is of no known kind, or has a field the QR text has no place for.
    """
    try:
        form = FORMS[ReceiptKind(signed.get("kind", ReceiptKind.TOPUP))]
    except ValueError:
        raise ValueError(f"no receipt kind {signed.get('kind')!r}") from None
    extra = set(signed) - set(form.fields) - {"kind"}
    if extra:
        raise ValueError(f"the QR text has no place for {sorted(extra)}")
    values = [form.tag, *(signed.get(name) for name in form.fields)]
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


def receipt_from_qr_text(text: str) -> dict[str, Any]:
    """The signed receipt a QR text carries (its signature is not checked here).

    Raises:
        UnreadableReceiptError: not a receipt's QR text.
    """
    try:
        values = loads_strict(text.strip().encode())
    except ValueError as exc:
        raise UnreadableReceiptError(f"not a receipt's QR text: {exc}") from None
    return receipt_from_values(values)


def receipt_from_values(values: object) -> dict[str, Any]:
    """The signed receipt of a parsed QR text (a list that starts with a tag of `FORMS`).

    Raises:
        UnreadableReceiptError: not such a list.
    """
    form = _BY_TAG.get(values[0]) if isinstance(values, list) and values else None
    if form is None or not isinstance(values, list):
        raise UnreadableReceiptError(
            f'not a receipt\'s QR text: it starts with ["{QR_TAG}", (or another receipt tag)'
        )
    if len(values) != 1 + len(form.fields):
        raise UnreadableReceiptError(
            f"not a receipt's QR text: {len(values) - 1} values, {form.tag} has {len(form.fields)}"
        )
    signed = {
        name: value
        for name, value in zip(form.fields, values[1:], strict=True)
        if value is not None
    }
    if form.kind is not ReceiptKind.TOPUP:
        signed = {"kind": str(form.kind), **signed}
    return signed


def find_cjk_font() -> Path:
    """The first installed font of `CJK_FONTS`.

    Raises:
        MissingFontError: none is installed.
    """
    for path in CJK_FONTS:
        if path.is_file():
            return path
    raise MissingFontError(f"no font with Chinese glyphs: {_FONT_HINT}")


def render_pdf(
    signed: Mapping[str, Any], receipt: AnyReceiptPayload, tz: ZoneInfo, font: Path
) -> bytes:
    """The receipt as an 80 mm PDF: ``signed`` (the signed object) is attached and in the QR
    code, ``receipt`` (its verified model) is what is printed.

    Raises:
        ValueError: ``signed`` has a field the QR text has no place for.
        OSError: the font cannot be read.
    """
    text = qr_text(signed)
    # Measure on a long page, then lay out again on a page as tall as the receipt.
    height_mm = _layout(signed, receipt, tz, font, text, _TALL_MM)[1] + _MARGIN_MM
    return _layout(signed, receipt, tz, font, text, height_mm)[0]


def _layout(
    signed: Mapping[str, Any],
    receipt: AnyReceiptPayload,
    tz: ZoneInfo,
    font: Path,
    text: str,
    height_mm: float,
) -> tuple[bytes, float]:
    from fpdf import FPDF  # noqa: PLC0415 - only when a receipt is printed
    from fpdf.enums import XPos, YPos  # noqa: PLC0415

    pdf = FPDF(unit="mm", format=(_PAGE_W_MM, height_mm))
    pdf.set_margins(_MARGIN_MM, _MARGIN_MM, _MARGIN_MM)
    pdf.set_auto_page_break(auto=False)
    # Dated by the receipt, not by the printing: the same receipt prints to the same file.
    pdf.set_creation_date(issued_at(receipt))
    form = form_of(receipt)
    pdf.set_title(f"{form.title_en} {receipt.site} #{receipt.receipt_seq}")
    pdf.set_creator("prepay-gateway")
    lines = printed_lines(receipt, tz)
    title = f"{form.title_zh} {form.title_en}"
    labels = [f"{line.label_zh} {line.label_en}" for line in lines]
    values = [line.value for line in lines]
    _add_cjk_font(pdf, font, [title, receipt.site, SCAN_HINT, *labels, *values])
    pdf.add_page()
    # Each item starts a line of its own, at the left margin.
    nx, ny = XPos.LMARGIN, YPos.NEXT
    pdf.set_font("cjk", size=12)
    pdf.cell(w=0, h=6, text=title, align="C", new_x=nx, new_y=ny)
    pdf.set_font("cjk", size=9)
    pdf.multi_cell(w=0, h=4.5, text=receipt.site, align="C", new_x=nx, new_y=ny)
    pdf.ln(2)
    for label, value in zip(labels, values, strict=True):
        pdf.set_font("cjk", size=7)
        pdf.set_text_color(90)
        pdf.cell(w=0, h=3.5, text=label, new_x=nx, new_y=ny)
        pdf.set_font("cjk", size=10)
        pdf.set_text_color(0)
        pdf.multi_cell(w=0, h=5, text=value, align="R", new_x=nx, new_y=ny)
    pdf.ln(2)
    pdf.image(
        io.BytesIO(_qr_png(text)),
        x=(_PAGE_W_MM - _QR_W_MM) / 2,
        w=_QR_W_MM,
        h=_QR_W_MM,
    )
    pdf.set_font("cjk", size=7)
    pdf.multi_cell(w=0, h=3.5, text=SCAN_HINT, align="C", new_x=nx, new_y=ny)
    bottom = pdf.get_y()
    pdf.embed_file(
        bytes=json.dumps(dict(signed), sort_keys=True, ensure_ascii=False).encode(),
        basename=ATTACHMENT,
        modification_date=issued_at(receipt),
        mime_type="application/json",
        desc="the signed receipt",
        compress=False,
    )
    return bytes(pdf.output()), bottom


def _add_cjk_font(pdf: FPDF, font: Path, texts: list[str]) -> None:
    """Make ``font`` the PDF's font ``cjk``, once it is known to have a glyph for every
    character of ``texts`` (a font without them would print empty boxes).

    Raises:
        MissingFontError: not a font, or one without Chinese glyphs.
        OSError: the file cannot be read.
    """
    from fontTools.ttLib import (  # noqa: PLC0415
        TTLibError,  # fpdf2 reads fonts with fontTools and lets its errors through
    )
    from fpdf.fonts import TTFFont  # noqa: PLC0415

    # fontTools leaves the file open when it refuses one, so look at the magic number first.
    with font.open("rb") as handle:
        magic = handle.read(4)
    if magic not in _FONT_MAGIC:
        raise MissingFontError(f"{font}: not a font: no TrueType, OpenType or collection header")
    try:
        pdf.add_font("cjk", "", str(font))
    except TTLibError as exc:
        raise MissingFontError(f"{font}: not a font: {exc}") from None
    loaded = pdf.fonts["cjk"]
    missing = sorted(
        {char for text in texts for char in text if char.strip()}
        - ({chr(code) for code in loaded.cmap} if isinstance(loaded, TTFFont) else set())
    )
    if missing:
        # fpdf2 closes a font's file when it writes the PDF; a refused one is closed here.
        if isinstance(loaded, TTFFont):
            loaded.close()
        raise MissingFontError(f"{font}: has no glyph for {''.join(missing)}; {_FONT_HINT}")


def _qr_png(text: str) -> bytes:
    import segno  # noqa: PLC0415 - only when a receipt is printed

    # Level M (15 % of the code may be lost) and never raised: the smallest code that holds the
    # text; the image is scaled to its printed width, a few device pixels per module.
    qr = segno.make(text, error="m", boost_error=False, micro=False)
    out = io.BytesIO()
    qr.save(out, kind="png", scale=_QR_PX_PER_MODULE, border=4)
    return out.getvalue()


def qr_version(text: str) -> int:
    """The QR code version (1-40) the text is printed with."""
    import segno  # noqa: PLC0415 - only when asked

    version = segno.make(text, error="m", boost_error=False, micro=False).version
    return int(version)


@dataclass(frozen=True, slots=True)
class ReceiptPdf:
    """What a receipt PDF holds: the attached signed receipt and the text of its page."""

    signed: dict[str, Any]
    page_text: str


def read_pdf(data: bytes) -> ReceiptPdf:
    """The signed receipt attached to a receipt PDF, and the text printed on its page.

    Raises:
        UnreadableReceiptError: not a PDF, or one without an attached receipt.
    """
    from pypdf import PdfReader  # noqa: PLC0415 - only when a PDF is read
    from pypdf.errors import PyPdfError  # noqa: PLC0415

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        attached = reader.attachments.get(ATTACHMENT)
        page_text = "".join(page.extract_text() for page in reader.pages)
    # pypdf reports a damaged file with its own errors and, for some damage, with the
    # built-in ones; any of them means the same here: no readable receipt PDF.
    except (PyPdfError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise UnreadableReceiptError(f"not a readable PDF: {exc}") from None
    if not attached:
        raise UnreadableReceiptError(f"a PDF without an attached {ATTACHMENT}: not a receipt")
    try:
        signed = loads_strict(attached[0])
    except ValueError as exc:
        raise UnreadableReceiptError(f"{ATTACHMENT} in the PDF: {exc}") from None
    if not isinstance(signed, dict):
        raise UnreadableReceiptError(f"{ATTACHMENT} in the PDF is not a JSON object")
    return ReceiptPdf(signed, page_text)


def printed_differences(page_text: str, receipt: AnyReceiptPayload) -> list[str]:
    """The checked lines of ``receipt`` whose value is not printed on the page.

    Whitespace is ignored (text extraction breaks and joins lines its own way); a value is
    looked for between its label and the next line's, so that a page showing ``125.50 CNY``
    does not pass for ``25.50 CNY``.
    """
    squashed = "".join(page_text.split())
    lines = [*printed_lines(receipt, ZoneInfo("UTC")), PrintedLine(SCAN_HINT, "", "")]
    return [
        line.label_en
        for line, after in pairwise(lines)
        if line.checked
        and "".join(f"{line.label_zh}{line.label_en}{line.value}{after.label_zh}".split())
        not in squashed
    ]
