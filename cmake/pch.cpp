// Translation unit that owns the precompiled header shared by xpo's own programs (see xpoBuildSupport.cmake).
