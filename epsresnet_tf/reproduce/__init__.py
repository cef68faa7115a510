"""`make reproduce`: the papers' claims tested on the data of this machine, and
docs/REPRODUCTION.md generated from the run folders (never typed numbers).

    pieces.PIECES / pieces.ORDER     the claims, their runs and verdict rules, as data
    runner.run_steps(steps, root, data)   run what is unfinished (resumable), log wall times
    doc.write_doc(root, doc_path, img_dir)  the document, tables and figures from run folders
    gpu.TABLES                       `make reproduce-gpu`: the full-scale runs, one per table
    published                        the papers' numbers, in one place
"""
