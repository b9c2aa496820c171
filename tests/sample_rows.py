"""Small structured samples shared by the training tests: row i sets ``x0`` to i in a file of 2-8 lines."""


def edit_rows(n: int = 40) -> list[dict]:
    rows = []
    for i in range(n):
        before = "".join(f"x{j} = {j}\n" for j in range(i % 7 + 2))
        rows.append({"name": f"f{i}.py", "before": before, "message": f"set x0 to {i}", "diff": f"@@ -1 +1 @@\n-x0 = 0\n+x0 = {i}\n"})
    return rows
