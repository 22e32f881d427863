"""MkDocs hooks of this site (``hooks:`` in mkdocs.yml), loaded before any page is built.

The executed pages build normflows ``GlowBlock``\\ s, whose ``Invertible1x1Conv(use_lu=True)``
calls ``torch.lu``; torch answers with a deprecation UserWarning of ten lines, normflows' to fix
and nothing a reader of the site can act on, so the build does not print it. Any other warning
still shows (and fails the strict build where markdown-exec reports it).
"""

import warnings

warnings.filterwarnings("ignore", message=r"torch\.lu is deprecated", category=UserWarning)
