"""What every part uses: errors and command lines, atomic writes, process settings, paths, figures, image folders."""
