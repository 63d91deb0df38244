#!/usr/bin/env python3
"""Rewrite CUDA source so that g++ can compile it against cuda_emu.h.

    python3 dev/cuda_emu/cuda_emu_rewrite.py input.cu output.cpp

Only two things change; everything else is copied as is, and line numbers are
kept (the output starts with a #line directive naming the input), so compiler
errors, __FILE__/__LINE__ and sanitizer reports point into the original file.

1. Launches. `kernel<<<grid, block[, smem[, stream]]>>>(args)`, also with
   template arguments (`kernel<T, 4><<<...>>>`) and spread over several lines,
   becomes a call of cuda_emu::launch that runs every CUDA thread on a fiber.
2. Shared memory. `__shared__ T name[N];` becomes a reference into the
   emulator's per-block arena, and `extern __shared__ T name[];` a pointer to
   the block's dynamic shared memory.

Quoted #includes that resolve next to the including file are rewritten the
same way (into files beside the output) when they contain launches or shared
memory, and otherwise are pointed at by absolute path.

What cannot be emulated stops the build here with file:line: inline PTX
assembly, and __shared__ declarations of a form this script does not parse.
Python 3 standard library only.
"""
import os
import re
import sys

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
INCLUDE = re.compile(r'^([ \t]*#[ \t]*include[ \t]*)"([^"]+)"', re.M)


class RewriteError(Exception):
    pass


def code_mask(text):
    """True for characters that are code: not in comments, strings or char literals."""
    mask = bytearray(b"\x01") * len(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and i + 1 < n and text[i + 1] == "/":
            j = text.find("\n", i)
            j = n if j < 0 else j
            mask[i:j] = b"\x00" * (j - i)
            i = j
        elif c == "/" and i + 1 < n and text[i + 1] == "*":
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            mask[i:j] = b"\x00" * (j - i)
            i = j
        elif c == "R" and i + 1 < n and text[i + 1] == '"' and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'R"([^()\\ ]{0,16})\(', text[i:])
            if not m:
                i += 1
                continue
            end = text.find(")" + m.group(1) + '"', i)
            j = n if end < 0 else end + len(m.group(1)) + 2
            mask[i:j] = b"\x00" * (j - i)
            i = j
        elif c == '"' or (c == "'" and not (i > 0 and (text[i - 1].isalnum()))):
            # a quote after a digit is a C++14 digit separator, not a char literal
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            mask[i:j] = b"\x00" * (j - i)
            i = j
        else:
            i += 1
    return mask


def line_of(text, pos):
    return text.count("\n", 0, pos) + 1


def match_forward(text, mask, i, open_c, close_c):
    """Index just past the bracket that closes the one at i."""
    depth = 0
    n = len(text)
    while i < n:
        if mask[i]:
            if text[i] == open_c:
                depth += 1
            elif text[i] == close_c:
                depth -= 1
                if depth == 0:
                    return i + 1
        i += 1
    return -1


def match_backward(text, mask, i, open_c, close_c):
    """Index of the bracket that opens the one closing at i."""
    depth = 0
    while i >= 0:
        if mask[i]:
            if text[i] == close_c:
                depth += 1
            elif text[i] == open_c:
                depth -= 1
                if depth == 0:
                    return i
        i -= 1
    return -1


def template_kernel_names(text, mask):
    """Names of __global__ functions declared as templates (their launches may deduce arguments)."""
    names = set()
    for m in re.finditer(r"\b__global__\b", text):
        if not mask[m.start()]:
            continue
        # the declaration starts after the previous ; { or } in code
        j = m.start() - 1
        while j >= 0 and not (mask[j] and text[j] in ";{}"):
            j -= 1
        head = "".join(ch for k, ch in enumerate(text[j + 1:m.start()], j + 1) if mask[k])
        paren = text.find("(", m.end())
        while paren >= 0 and re.search(r"(__launch_bounds__|__attribute__)\s*$", text[m.end():paren]):
            close = match_forward(text, mask, paren, "(", ")")
            paren = text.find("(", close)
        if paren < 0:
            continue
        name = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*$", text[m.end():paren])
        if name and re.search(r"\btemplate\b", head):
            names.add(name.group(1))
    return names


def kernel_expression_start(text, mask, end):
    """Start of the kernel expression that ends just before `end` (the <<<)."""
    j = end - 1
    while j >= 0 and text[j].isspace():
        j -= 1
    if j >= 0 and text[j] == ">":  # template arguments
        j = match_backward(text, mask, j, "<", ">")
        if j < 0:
            return -1
        j -= 1
        while j >= 0 and text[j].isspace():
            j -= 1
    if j >= 0 and text[j] == ")":  # (kernel_pointer) or (*p)
        return match_backward(text, mask, j, "(", ")")
    k = j
    while k >= 0 and (text[k].isalnum() or text[k] in "_:"):
        k -= 1
    return k + 1 if k < j else -1


def rewrite_launches(text, mask, path, template_names):
    out = []
    pos = 0
    search = 0
    while True:
        i = text.find("<<<", search)
        if i < 0:
            break
        if not mask[i]:
            search = i + 3
            continue
        line = line_of(text, i)
        start = kernel_expression_start(text, mask, i)
        if start < 0 or start < pos:
            raise RewriteError(f"{path}:{line}: cannot find the kernel name before <<<")
        kernel = text[start:i].strip()
        # the launch configuration runs to the >>> at bracket depth 0
        j = i + 3
        depth = 0
        cfg_end = -1
        while j < len(text):
            if mask[j]:
                if text.startswith(">>>", j) and depth == 0:
                    cfg_end = j
                    break
                if text[j] in "([{":
                    depth += 1
                elif text[j] in ")]}":
                    depth -= 1
                elif text[j] == ";":
                    break
            j += 1
        if cfg_end < 0:
            raise RewriteError(f"{path}:{line}: cannot find the >>> that ends this launch configuration")
        config = text[i + 3:cfg_end]
        k = cfg_end + 3
        while k < len(text) and text[k].isspace():
            k += 1
        if k >= len(text) or text[k] != "(":
            raise RewriteError(f"{path}:{line}: expected ( with the kernel arguments after >>>")
        args_end = match_forward(text, mask, k, "(", ")")
        if args_end < 0:
            raise RewriteError(f"{path}:{line}: unbalanced parentheses in the kernel arguments")
        args = text[k + 1:args_end - 1]
        name = " ".join(kernel.split())
        bare = re.sub(r"<.*$", "", name, flags=re.S).strip().split("::")[-1]
        deduced = not name.endswith(">") and bare in template_names
        address = "nullptr" if deduced else f"::cuda_emu::kernel_address({kernel})"
        call = (f'::cuda_emu::launch("{name}", {address}, ::cuda_emu::config({config}), '
                f"[&](auto&... cuda_emu_args) {{ {kernel}(cuda_emu_args...); }}")
        call += f", {args})" if args.strip() else f"{args})"
        original = text[start:args_end]
        missing = original.count("\n") - call.count("\n")
        out.append(text[pos:start])
        out.append(call + "\n" * max(missing, 0))
        pos = args_end
        search = args_end
    out.append(text[pos:])
    return "".join(out)


SPECIFIER = re.compile(
    r"\s*(?:(extern|static|volatile|const|__device__|__restrict__)\b"
    r"|(__align__|alignas)\s*\(([^()]*)\)"
    r"|__attribute__\s*\(\((?:aligned\s*\(([^()]*)\))?[^()]*\)\))")


def parse_specifiers(s):
    """Strips leading specifiers; returns (rest, extern, cv, align expression or None)."""
    extern, cv, align = False, [], None
    while True:
        m = SPECIFIER.match(s)
        if not m or m.end() == 0:
            return s, extern, cv, align
        word = m.group(1)
        if word == "extern":
            extern = True
        elif word in ("volatile", "const"):
            cv.append(word)
        if m.group(3):
            align = m.group(3).strip()
        if m.group(4):
            align = m.group(4).strip()
        s = s[m.end():]


def split_top_level(s, sep):
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def split_declarator(d):
    """'float *p[4][2]' -> ('float *', 'p', '[4][2]')."""
    d = d.strip()
    dims = ""
    while d.endswith("]"):
        depth = 0
        for k in range(len(d) - 1, -1, -1):
            if d[k] == "]":
                depth += 1
            elif d[k] == "[":
                depth -= 1
                if depth == 0:
                    break
        dims = d[k:] + dims
        d = d[:k].rstrip()
    m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)$", d)
    if not m:
        return None
    return d[:m.start()], m.group(1), dims


def outside_functions(text, mask, positions):
    """For each position: True when no function (only namespaces) encloses it."""
    wanted = sorted(set(positions))
    result = {}
    stack = []  # True for a namespace or extern "C" brace
    k = 0
    for i, ch in enumerate(text):
        while k < len(wanted) and wanted[k] == i:
            result[i] = all(stack)
            k += 1
        if not mask[i]:
            continue
        if ch == "{":
            before = text[max(0, i - 200):i]
            stack.append(bool(re.search(r'(\bnamespace\b[\s\w:]*|\bextern\s*"C"\s*)$', before)))
        elif ch == "}" and stack:
            stack.pop()
    for p in wanted[k:]:
        result[p] = all(stack)
    return result


def rewrite_shared(text, mask, path):
    out = []
    pos = 0
    matches = [m for m in re.finditer(r"\b__shared__\b", text) if mask[m.start()]]
    at_file_scope = outside_functions(text, mask, [m.start() for m in matches])
    for m in matches:
        s = m.start()
        if s < pos:
            continue
        line = line_of(text, s)
        if at_file_scope[s]:
            raise RewriteError(f"{path}:{line}: __shared__ variables at file scope are not supported by cuda_emu; "
                               f"declare them inside the kernel")
        # the declaration starts after the previous ; { } or preprocessor line
        b = s - 1
        while b >= 0 and not (mask[b] and text[b] in ";{}"):
            b -= 1
        nl = text.rfind("\n", 0, s)
        while nl > b:
            prev_nl = text.rfind("\n", 0, nl)
            if text[prev_nl + 1:nl].lstrip().startswith("#"):
                b = max(b, nl)
                break
            nl = prev_nl
        begin = b + 1
        while begin < s and (text[begin].isspace() or not mask[begin]):  # skip blanks and comments
            begin += 1
        e = s
        depth = 0
        while e < len(text) and not (mask[e] and text[e] == ";" and depth == 0):
            if mask[e] and text[e] in "([{":
                depth += 1
            elif mask[e] and text[e] in ")]}":
                depth -= 1
            e += 1
        if e >= len(text):
            raise RewriteError(f"{path}:{line}: cannot find the ; that ends this __shared__ declaration")
        code = lambda a, z: "".join(ch if mask[k] else " " for k, ch in enumerate(text[a:z], a))
        prefix = code(begin, s)
        rest_prefix, extern, cv, align = parse_specifiers(prefix)
        if rest_prefix.strip():
            raise RewriteError(f"{path}:{line}: cuda_emu cannot parse this __shared__ declaration "
                               f"(unexpected '{rest_prefix.strip()}' before __shared__); write it as "
                               f"'__shared__ type name[N];'")
        body, extern2, cv2, align2 = parse_specifiers(code(m.end(), e))
        extern = extern or extern2
        cv = " ".join(cv + cv2)
        align = align2 or align
        if "=" in body or "(" in body.split("[")[0]:
            raise RewriteError(f"{path}:{line}: __shared__ variables cannot have initializers in CUDA; "
                               f"cuda_emu cannot parse this declaration")
        declarators = split_top_level(body, ",")
        first = split_declarator(declarators[0])
        if not first or not first[0].strip():
            raise RewriteError(f"{path}:{line}: cuda_emu cannot parse this __shared__ declaration")
        base_type = (cv + " " + first[0].strip().rstrip("*&").strip()).strip()
        pieces = []
        for idx, d in enumerate(declarators):
            parsed = split_declarator(d) if idx else first
            if not parsed:
                raise RewriteError(f"{path}:{line}: cuda_emu cannot parse the declarator '{d.strip()}'")
            stars = re.sub(r"[^*]", "", parsed[0] if idx else first[0][len(first[0].rstrip("*& \t")):])
            name, dims = parsed[1], re.sub(r"\s+", " ", parsed[2])
            if extern:
                if dims.replace(" ", "") != "[]":
                    raise RewriteError(f"{path}:{line}: extern __shared__ '{name}' must be declared as "
                                       f"'extern __shared__ T {name}[];' for cuda_emu")
                pieces.append(f"{base_type}{stars}* const {name} = "
                              f'::cuda_emu::dynamic_shared<{base_type}{stars}>("{name}");')
            else:
                if "[]" in dims.replace(" ", ""):
                    raise RewriteError(f"{path}:{line}: __shared__ '{name}' has an array dimension missing")
                extra = f", {align}" if align else ""
                pieces.append(f"auto& {name} = ::cuda_emu::shared_variable<{base_type}{stars}{dims}>"
                              f'([] {{}}, "{name}"{extra});')
        replacement = " ".join(pieces)
        original = text[begin:e + 1]
        out.append(text[pos:begin])
        out.append(replacement + "\n" * (original.count("\n")))
        pos = e + 1
    out.append(text[pos:])
    return "".join(out)


def check_unsupported(text, mask, path):
    for m in re.finditer(r"\b(asm|__asm__|__asm)\b\s*(volatile\b|__volatile__\b)?\s*\(", text):
        if mask[m.start()]:
            raise RewriteError(f"{path}:{line_of(text, m.start())}: inline assembly (PTX) cannot run on the CPU; "
                               f"use an intrinsic cuda_emu provides, or guard it with #ifndef CUDA_EMU")
    # not an error, but the emulator compiles the host side of such code
    for m in re.finditer(r"\b__CUDA_ARCH__\b", text):
        if mask[m.start()]:
            print(f"{path}:{line_of(text, m.start())}: warning: __CUDA_ARCH__ is not defined under cuda_emu, "
                  f"so the host branch of this #if is what runs", file=sys.stderr)


def needs_rewrite(text):
    return "<<<" in text or "__shared__" in text


def rewrite_file(src, dst, done):
    """Rewrite src into dst, and its quoted includes that need it beside dst."""
    with open(src, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    mask = code_mask(text)
    check_unsupported(text, mask, src)
    src_dir = os.path.dirname(os.path.abspath(src))
    out_dir = os.path.dirname(os.path.abspath(dst))

    def include(m):
        target = os.path.normpath(os.path.join(src_dir, m.group(2)))
        in_code = mask[m.start(1) + len(m.group(1).rstrip()) - 1]  # not inside a comment
        if not in_code or not os.path.isfile(target):
            return m.group(0)  # found on the include path: leave it
        with open(target, encoding="utf-8", errors="surrogateescape") as f:
            inc_text = f.read()
        if not needs_rewrite(inc_text):
            return f'{m.group(1)}"{target}"'
        inc_dst = os.path.join(out_dir, "cuda_emu_inc_" + re.sub(r"[^A-Za-z0-9_.]", "_", target.lstrip("/")))
        if target not in done:
            done.add(target)
            rewrite_file(target, inc_dst, done)
        return f'{m.group(1)}"{inc_dst}"'

    text = INCLUDE.sub(include, text)
    mask = code_mask(text)
    text = rewrite_launches(text, mask, src, template_kernel_names(text, mask))
    mask = code_mask(text)
    text = rewrite_shared(text, mask, src)
    out = f'#line 1 "{src}"\n' + text
    # an unchanged output keeps its time: several programs include the same
    # rewritten file, and a fresh time on it would make make rebuild them all
    try:
        with open(dst, encoding="utf-8", errors="surrogateescape") as f:
            if f.read() == out:
                return
    except OSError:
        pass
    tmp = dst + ".tmp"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(out)
    os.replace(tmp, dst)


def main(argv):
    usage = "usage: cuda_emu_rewrite.py input.cu output.cpp [--depfile file.d --target name]"
    args = argv[1:]
    depfile = target = None
    while len(args) > 2 and args[-2] in ("--depfile", "--target"):
        if args[-2] == "--depfile":
            depfile = args[-1]
        else:
            target = args[-1]
        args = args[:-2]
    if len(args) != 2 or (depfile is None) != (target is None):
        print(usage, file=sys.stderr)
        return 2
    src, dst = args
    if not os.path.isfile(src):
        print(f"cuda_emu_rewrite.py: {src}: no such file", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    rewritten = set()
    try:
        rewrite_file(src, dst, rewritten)
    except RewriteError as e:
        print(f"{e}\ncuda_emu_rewrite.py: not rewritten (see dev/cuda_emu/README.md)", file=sys.stderr)
        return 1
    if depfile:
        # make rules: the target depends on every source this step rewrote
        # (the compiler's own depfile covers the headers it includes unchanged)
        sources = [src] + sorted(rewritten)
        with open(depfile, "w") as f:
            f.write(f"{target}: {' '.join(sources)}\n")
            for extra in sorted(rewritten):
                f.write(f"{extra}:\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
